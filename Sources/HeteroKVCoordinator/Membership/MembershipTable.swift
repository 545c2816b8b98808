/// Who is in the cluster and whether each member's lease is current. A pure value: time is
/// passed in (seconds on any monotonic scale), so lease expiry is tested without clocks or
/// sockets; the coordinator's service feeds it registrations, heartbeats and ticks.
public struct MembershipTable: Sendable, Hashable, Codable {
  /// What kind of process a member is.
  public enum Role: String, Sendable, Hashable, Codable, CaseIterable {
    case memoryNode = "memory_node"
    case worker
  }

  /// Whether a member's lease is current.
  public enum Status: String, Sendable, Hashable, Codable {
    case up
    case down
  }

  /// One member and its lease.
  public struct Member: Sendable, Hashable, Codable {
    /// The member's id, unique in the cluster.
    public var id: String
    /// Memory node or worker.
    public var role: Role
    /// Where its data plane listens (memory nodes).
    public var dataAddress: String
    /// Where its control service listens.
    public var controlAddress: String
    /// Capacity in bytes (memory nodes; 0 for workers).
    public var capacityBytes: UInt64
    /// Data-plane transport served, `tcp` or `rdma` (memory nodes).
    public var transport: String = "tcp"
    /// When the lease runs out unless renewed.
    public var leaseExpiresAt: Double
    /// Up while the lease is current.
    public var status: Status
    /// Incremented on every (re-)registration, so a restarted member is told apart.
    public var incarnation: UInt64
  }

  /// How long a lease lasts after a registration or heartbeat, in seconds.
  public var leaseSeconds: Double
  /// Members by id.
  public internal(set) var members: [String: Member] = [:]

  /// An empty table with leases of `leaseSeconds`.
  public init(leaseSeconds: Double) {
    precondition(leaseSeconds > 0)
    self.leaseSeconds = leaseSeconds
  }

  /// The member record a registration at `now` makes: up, with a fresh lease and the next
  /// incarnation. The coordinator logs this record; `register` applies it.
  public func registration(
    id: String, role: Role, dataAddress: String, controlAddress: String, capacityBytes: UInt64,
    transport: String = "tcp", now: Double
  ) -> Member {
    Member(
      id: id, role: role, dataAddress: dataAddress, controlAddress: controlAddress,
      capacityBytes: capacityBytes, transport: transport, leaseExpiresAt: now + leaseSeconds,
      status: .up, incarnation: (members[id]?.incarnation ?? 0) + 1)
  }

  /// Registers (or re-registers) a member at time `now`; returns its incarnation.
  @discardableResult
  public mutating func register(
    id: String, role: Role, dataAddress: String, controlAddress: String, capacityBytes: UInt64,
    transport: String = "tcp", now: Double
  ) -> UInt64 {
    let member = registration(
      id: id, role: role, dataAddress: dataAddress, controlAddress: controlAddress,
      capacityBytes: capacityBytes, transport: transport, now: now)
    members[id] = member
    return member.incarnation
  }

  /// Gives every member that is up a fresh lease from `now`: lease times are not kept across a
  /// coordinator restart, so members get one lease period to renew with the new process.
  public mutating func restartLeases(now: Double) {
    for id in members.keys where members[id]!.status == .up {
      members[id]!.leaseExpiresAt = now + leaseSeconds
    }
  }

  /// Marks `ids` down (an expiry being applied or replayed).
  public mutating func markDown(_ ids: [String]) {
    for id in ids { members[id]?.status = .down }
  }

  /// Renews a lease. False when the member is unknown or its lease already lapsed (it must
  /// register again, so that whoever placed data on it learns it restarted).
  public mutating func heartbeat(id: String, now: Double) -> Bool {
    guard var member = members[id], member.status == .up, now <= member.leaseExpiresAt else {
      return false
    }
    member.leaseExpiresAt = now + leaseSeconds
    members[id] = member
    return true
  }

  /// The members still up whose lease ran out by `now`, sorted.
  public func lapsed(now: Double) -> [String] {
    members.values.filter { $0.status == .up && now > $0.leaseExpiresAt }.map(\.id).sorted()
  }

  /// Marks down every member whose lease ran out by `now`; returns their ids, sorted.
  public mutating func expire(now: Double) -> [String] {
    let ids = lapsed(now: now)
    markDown(ids)
    return ids
  }

  /// The members of `role` that are up, sorted by id.
  public func up(_ role: Role) -> [Member] {
    members.values.filter { $0.role == role && $0.status == .up }.sorted { $0.id < $1.id }
  }
}
