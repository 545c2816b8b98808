import CoreMetrics
import HeteroKVSettings
import HeteroKVCore
import HeteroKVWire
import Logging

/// A member as the admin CLI sees it: its registration, its lease and the use it reported.
public struct MemberView: Sendable, Hashable, Codable {
  public var member: MembershipTable.Member
  /// Bytes in use at the last heartbeat (memory nodes).
  public var usedBytes: UInt64
  /// Seconds until the lease lapses; 0 once the member is down.
  public var leaseRemainingSeconds: Double
}

/// Pool capacity and use, sequences and members, at one moment.
public struct ClusterStatusView: Sendable, Hashable {
  public var cluster: String
  public var policy: String
  public var replication: Int
  /// Capacity of the memory nodes that are up.
  public var capacityBytes: UInt64
  /// Bytes in use on them, as last reported.
  public var usedBytes: UInt64
  /// Bytes reserved by open sequences.
  public var reservedBytes: UInt64
  public var nodesUp: Int
  public var nodesDown: Int
  public var workersUp: Int
  public var sequences: [SequenceRecord]
  /// The workers' last replication reports, by sequence.
  public var copies: [SequenceKey: ReplicationProgress] = [:]
  /// Sequences closed by the coordinator whose rows some node has yet to drop.
  public var sequencesAwaitingDrop: Int = 0
}

/// A worker's last account of a sequence's copies (kept in memory: it is progress, not state).
public struct ReplicationProgress: Sendable, Hashable {
  /// The placement version the worker has repaired (or is repairing) to.
  public var placementVersion: UInt64
  /// Shards held by fewer nodes than the placement names.
  public var underReplicatedShards: Int
  /// Shards and bytes copied to new replicas so far.
  public var shardsCopied: UInt64
  public var bytesCopied: UInt64

  public init(
    placementVersion: UInt64, underReplicatedShards: Int, shardsCopied: UInt64,
    bytesCopied: UInt64
  ) {
    self.placementVersion = placementVersion
    self.underReplicatedShards = underReplicatedShards
    self.shardsCopied = shardsCopied
    self.bytesCopied = bytesCopied
  }
}

/// A memory node that must drop the rows of a sequence the coordinator closed.
public struct PendingDrop: Sendable, Hashable {
  public var key: SequenceKey
  public var nodeID: String
  /// The node's gRPC control address, where `DropSequence` is called.
  public var controlAddress: String
}

/// The coordinator: membership by leases, per-sequence placement on memory nodes, head
/// profiles and budgets. Every change is made durable in the store before it is visible or
/// answered, so a restarted coordinator returns the same nodes, placements and budgets.
public actor Coordinator {
  /// The cluster it coordinates.
  public nonisolated let configuration: ClusterConfiguration
  /// The model geometry budgets and reservations are sized from.
  public nonisolated let model: ModelGeometry
  private let store: any CoordinatorStore
  private let now: @Sendable () -> Double
  private let logger: Logger
  private var state: CoordinatorState
  private var usedBytes: [String: UInt64] = [:]
  private var replication: [SequenceKey: ReplicationProgress] = [:]
  private let gauges: CoordinatorGauges
  private var busy = false
  private var waiting: [CheckedContinuation<Void, Never>] = []

  /// A coordinator that resumes from whatever `store` holds. `now` gives seconds on a
  /// monotonic scale (tests pass their own).
  public init(
    configuration: ClusterConfiguration, store: any CoordinatorStore,
    metricsFactory: any MetricsFactory, logger: Logger,
    now: @escaping @Sendable () -> Double = Coordinator.monotonicSeconds
  ) throws(HeteroKVError) {
    guard let model = configuration.model else {
      throw .failedPrecondition(
        "the cluster file has no model; the coordinator sizes budgets from it")
    }
    let lease = configuration.coordinator?.leaseSeconds ?? 10
    var restored = try store.load() ?? CoordinatorState(leaseSeconds: lease)
    restored.membership.leaseSeconds = lease
    restored.membership.restartLeases(now: now())
    self.configuration = configuration
    self.model = model
    self.store = store
    self.now = now
    self.logger = logger
    self.state = restored
    self.gauges = CoordinatorGauges(factory: metricsFactory)
    gauges.update(restored, used: [:])
    if restored.revision > 0 {
      logger.info(
        "coordinator state restored",
        metadata: [
          "revision": "\(restored.revision)", "members": "\(restored.membership.members.count)",
          "sequences": "\(restored.sequences.count)",
        ])
    }
  }

  /// Seconds since an arbitrary fixed point, from the monotonic clock.
  @Sendable public static func monotonicSeconds() -> Double {
    (ContinuousClock.now - start).inSeconds
  }
  private static let start = ContinuousClock.now

  // MARK: Membership

  private func registerLocked(
    id: String, role: MembershipTable.Role, dataAddress: String, controlAddress: String,
    capacityBytes: UInt64, transport: String
  ) async throws(HeteroKVError) -> UInt64 {
    guard !id.isEmpty, id.utf8.count <= Self.maxIDBytes else {
      throw .invalid("member_id must be 1 to \(Self.maxIDBytes) bytes")
    }
    guard controlAddress.utf8.count <= 512, dataAddress.utf8.count <= 512 else {
      throw .invalid("addresses are at most 512 bytes")
    }
    if !controlAddress.isEmpty {
      guard let control = HostPort(controlAddress), control.port > 0 else {
        throw .invalid("control_address \"\(controlAddress)\" is not host:port")
      }
    }
    if role == .memoryNode {
      guard let data = HostPort(dataAddress), data.port > 0 else {
        throw .invalid(
          "a memory node needs data_address as host:port with a port, got \"\(dataAddress)\"")
      }
      guard capacityBytes > 0, capacityBytes <= Self.maxNodeCapacity else {
        throw .invalid(
          "capacity_bytes must be in 1...\(Self.maxNodeCapacity) (1 PiB), got \(capacityBytes)")
      }
      guard transport == "tcp" || transport == "rdma" else {
        throw .invalid("transport must be tcp or rdma, got \"\(transport)\"")
      }
    }
    let member = state.membership.registration(
      id: id, role: role, dataAddress: dataAddress, controlAddress: controlAddress,
      capacityBytes: capacityBytes, transport: transport, now: now())
    try await commit(.registered(member))
    if role == .worker { try await reclaimOrphans() }
    usedBytes[id] = 0
    logger.info(
      "member registered",
      metadata: [
        "member": "\(id)", "role": "\(role.rawValue)", "incarnation": "\(member.incarnation)",
      ])
    return member.incarnation
  }

  /// Renews a lease; false (with why) when the member must register again.
  public func heartbeat(id: String, incarnation: UInt64, usedBytes used: UInt64) -> (Bool, String) {
    guard let member = state.membership.members[id] else {
      return (false, "\(id) is not registered")
    }
    guard member.incarnation == incarnation else {
      return (false, "\(id) is at incarnation \(member.incarnation), not \(incarnation)")
    }
    guard state.membership.heartbeat(id: id, now: now()) else {
      return (false, "the lease of \(id) lapsed; register again")
    }
    usedBytes[id] = min(used, member.capacityBytes)
    gauges.recordUsed(state.membership, used: usedBytes)
    return (true, "")
  }

  private func expireLeasesLocked() async throws(HeteroKVError) -> [String] {
    let lapsed = state.membership.lapsed(now: now())
    if !lapsed.isEmpty {
      try await commit(.markedDown(lapsed))
      logger.warning("leases lapsed; members marked down", metadata: ["members": "\(lapsed)"])
    }
    try await reclaimOrphans()
    return lapsed
  }

  /// Closes every sequence whose worker is down or registered again since it opened it: the
  /// reservation is freed and the memory nodes that are up are queued to drop the rows.
  private func reclaimOrphans() async throws(HeteroKVError) {
    let orphaned = state.orphanedSequences
    guard !orphaned.isEmpty else { return }
    try await commit(.sequencesReclaimed(orphaned))
    for key in orphaned { replication[key] = nil }
    gauges.recordReplication(replication)
    logger.warning(
      "closed the sequences of a worker that is gone",
      metadata: ["sequences": "\(orphaned.map(\.description))"])
  }

  private func membersLocked() async throws(HeteroKVError) -> [MemberView] {
    // A read answers from the state even when the store cannot take the lease bookkeeping
    // (etcd without a quorum): a write that needs it fails at its own commit.
    _ = try? await expireLeasesLocked()
    let t = now()
    return state.membership.members.values.sorted { $0.id < $1.id }.map {
      MemberView(
        member: $0, usedBytes: $0.status == .up ? usedBytes[$0.id] ?? 0 : 0,
        leaseRemainingSeconds: $0.status == .up ? $0.leaseExpiresAt - t : 0)
    }
  }

  // MARK: Sequences and placement

  private func openSequenceLocked(key: SequenceKey, worker: String, maxTokens: Int)
    async throws(HeteroKVError)
    -> SequenceRecord
  {
    _ = try await expireLeasesLocked()
    if let existing = state.sequences[key] {
      guard existing.worker == worker else {
        throw .init(.alreadyExists, "sequence \(key) is already open by worker \(existing.worker)")
      }
      return existing
    }
    guard !worker.isEmpty, worker.utf8.count <= Self.maxIDBytes else {
      throw .invalid("worker_id must be 1 to \(Self.maxIDBytes) bytes")
    }
    guard maxTokens > 0, maxTokens <= 1 << 32 else {
      throw .invalid("max_tokens must be in 1...\(1 << 32), got \(maxTokens)")
    }
    if let nodes = state.pendingDrops[key] {
      throw .init(
        .unavailable,
        "the rows of an earlier sequence \(key) are still being dropped on \(nodes.joined(separator: ", ")); retry"
      )
    }
    let nodes = state.membership.up(.memoryNode)
    guard !nodes.isEmpty else {
      throw .failedPrecondition("no memory node is up to place sequence \(key) on")
    }
    let replicas = min(configuration.replication, nodes.count)
    let bytes = reservation(
      keyHeads: model.layers * model.kvHeads, tokens: maxTokens, replicas: replicas)
    try checkRoom(bytes, for: key)
    let record = SequenceRecord(
      key: key, worker: worker, maxTokens: maxTokens,
      placement: SequencePlacementRecord(
        version: 1, replicas: replicas,
        targets: nodes.map {
          PlacementTarget(
            nodeID: $0.id, dataAddress: $0.dataAddress, transport: $0.transport,
            weight: Double($0.capacityBytes))
        }, departed: []),
      reservedBytes: bytes,
      workerIncarnation: state.membership.members[worker].flatMap {
        $0.role == .worker ? $0.incarnation : nil
      })
    try await commit(.sequenceOpened(record))
    return record
  }

  private func sequenceLocked(_ key: SequenceKey) async throws(HeteroKVError) -> SequenceRecord {
    // A read answers from the state even when the store cannot take the lease bookkeeping
    // (etcd without a quorum): a write that needs it fails at its own commit.
    _ = try? await expireLeasesLocked()
    guard let record = state.sequences[key] else {
      throw .notFound("no open sequence \(key)")
    }
    return record
  }

  private func reportProfilesLocked(key: SequenceKey, prefillTokens: Int, profiles: [HeadProfile])
    async throws(HeteroKVError) -> SequenceRecord
  {
    let record = try await sequenceLocked(key)
    guard prefillTokens > 0, prefillTokens <= record.maxTokens else {
      throw .invalid(
        "prefill_tokens must be in 1...\(record.maxTokens) (the sequence's max_tokens), got \(prefillTokens)"
      )
    }
    try validate(profiles)
    let sorted = profiles.sorted { ($0.layer, $0.kvHead) < ($1.layer, $1.kvHead) }
    let settings = configuration.budgets
    let plan = try BudgetPlanner.plan(
      profiles: sorted, prefillTokens: prefillTokens, settings: settings)
    if let shortfall = plan.shortfall {
      logger.notice("budgets of \(key): \(shortfall)")
    }
    let keyHeads: Int =
      switch settings.policy {
      case .heterocache: sorted.filter { $0.role != .anchor }.count
      case .hcattention: sorted.count
      case .uniform: 0
      }
    let bytes = reservation(
      keyHeads: keyHeads, tokens: record.maxTokens, replicas: record.placement.replicas)
    if bytes > record.reservedBytes { try checkRoom(bytes - record.reservedBytes, for: key) }
    try await commit(
      .profilesReported(
        key, prefillTokens: prefillTokens, profiles: sorted, budgets: plan,
        policy: settings.policy.rawValue, reservedBytes: bytes))
    return state.sequences[key]!
  }

  private func budgetsLocked(of key: SequenceKey?) async throws(HeteroKVError) -> [SequenceRecord] {
    if let key { return [try await sequenceLocked(key)] }
    return state.sequences.values.sorted { $0.key < $1.key }
  }

  private func closeSequenceLocked(_ key: SequenceKey, undropped: [String])
    async throws(HeteroKVError) -> UInt64
  {
    let record = try await sequenceLocked(key)
    let known = undropped.filter { record.placement.targets.map(\.nodeID).contains($0) }
    try await commit(
      known.isEmpty ? .sequenceClosed(key) : .sequenceClosedLeavingRows(key, nodes: known))
    replication[key] = nil
    gauges.recordReplication(replication)
    return record.reservedBytes
  }

  private func reportReplicationLocked(_ key: SequenceKey, progress: ReplicationProgress)
    async throws(HeteroKVError) -> UInt64
  {
    let record = try await sequenceLocked(key)
    guard progress.placementVersion <= record.placement.version else {
      throw .invalid(
        "sequence \(key) is at placement version \(record.placement.version), not "
          + "\(progress.placementVersion)")
    }
    replication[key] = progress
    gauges.recordReplication(replication)
    return record.placement.version
  }

  private func pendingDropsLocked() async throws(HeteroKVError) -> [PendingDrop] {
    _ = try await expireLeasesLocked()
    var drops: [PendingDrop] = []
    for (key, nodes) in state.pendingDrops.sorted(by: { $0.key < $1.key }) {
      var unreachable: [String] = []
      for id in nodes {
        let address = state.membership.members[id]?.controlAddress ?? ""
        if address.isEmpty {
          unreachable.append(id)
        } else {
          drops.append(PendingDrop(key: key, nodeID: id, controlAddress: address))
        }
      }
      if !unreachable.isEmpty {
        logger.warning(
          "memory nodes without a control address cannot be told to drop a closed sequence",
          metadata: ["sequence": "\(key)", "nodes": "\(unreachable)"])
        try await commit(.rowsDropped(key, nodes: unreachable))
      }
    }
    return drops
  }

  private func rowsDroppedLocked(_ key: SequenceKey, nodes: [String]) async throws(HeteroKVError) {
    guard let pending = state.pendingDrops[key], pending.contains(where: nodes.contains) else {
      return
    }
    try await commit(.rowsDropped(key, nodes: nodes))
  }

  private func statusLocked() async throws(HeteroKVError) -> ClusterStatusView {
    // A read answers from the state even when the store cannot take the lease bookkeeping
    // (etcd without a quorum): a write that needs it fails at its own commit.
    _ = try? await expireLeasesLocked()
    let nodes = state.membership.members.values.filter { $0.role == .memoryNode }
    let up = nodes.filter { $0.status == .up }
    return ClusterStatusView(
      cluster: configuration.name, policy: configuration.budgets.policy.rawValue,
      replication: configuration.replication,
      capacityBytes: up.map(\.capacityBytes).saturatingSum,
      usedBytes: up.map { usedBytes[$0.id] ?? 0 }.saturatingSum,
      reservedBytes: state.reservedBytes, nodesUp: up.count, nodesDown: nodes.count - up.count,
      workersUp: state.membership.up(.worker).count,
      sequences: state.sequences.values.sorted { $0.key < $1.key }, copies: replication,
      sequencesAwaitingDrop: state.pendingDrops.count)
  }

  // MARK: Serialized entry points

  // Each change is computed from the state, made durable (an await on the store) and only
  // then adopted; entry points that change the state run one at a time, in arrival order, so
  // none computes from a state another is about to replace. Heartbeats and reads of the
  // adopted state do not wait.

  /// Registers (or re-registers) a member; returns its incarnation.
  public func register(
    id: String, role: MembershipTable.Role, dataAddress: String, controlAddress: String,
    capacityBytes: UInt64, transport: String
  ) async throws(HeteroKVError) -> UInt64 {
    await enter()
    defer { leave() }
    return try await registerLocked(
      id: id, role: role, dataAddress: dataAddress, controlAddress: controlAddress,
      capacityBytes: capacityBytes, transport: transport)
  }

  /// Marks down every member whose lease lapsed; returns their ids. Then closes the sequences
  /// of workers that are gone.
  @discardableResult
  public func expireLeases() async throws(HeteroKVError) -> [String] {
    await enter()
    defer { leave() }
    return try await expireLeasesLocked()
  }

  /// Every member with its lease and reported use, sorted by id.
  public func members() async throws(HeteroKVError) -> [MemberView] {
    await enter()
    defer { leave() }
    return try await membersLocked()
  }

  /// Opens `key` for `worker` (idempotent for the same worker) and returns its record.
  public func openSequence(key: SequenceKey, worker: String, maxTokens: Int)
    async throws(HeteroKVError) -> SequenceRecord
  {
    await enter()
    defer { leave() }
    return try await openSequenceLocked(key: key, worker: worker, maxTokens: maxTokens)
  }

  /// The record of `key`, or a not-found error naming it.
  public func sequence(_ key: SequenceKey) async throws(HeteroKVError) -> SequenceRecord {
    await enter()
    defer { leave() }
    return try await sequenceLocked(key)
  }

  /// Stores `profiles` for `key`, computes its budgets and reserves the memory tier they imply.
  public func reportProfiles(key: SequenceKey, prefillTokens: Int, profiles: [HeadProfile])
    async throws(HeteroKVError) -> SequenceRecord
  {
    await enter()
    defer { leave() }
    return try await reportProfilesLocked(
      key: key, prefillTokens: prefillTokens, profiles: profiles)
  }

  /// Records with budgets: of `key` when given (not found is an error), else of every open
  /// sequence, in key order.
  public func budgets(of key: SequenceKey?) async throws(HeteroKVError) -> [SequenceRecord] {
    await enter()
    defer { leave() }
    return try await budgetsLocked(of: key)
  }

  /// Closes `key`; returns the bytes released. `undropped` names memory nodes the worker could
  /// not reach to drop the rows: the coordinator has them drop the rows once they answer.
  public func closeSequence(_ key: SequenceKey, undropped: [String] = [])
    async throws(HeteroKVError) -> UInt64
  {
    await enter()
    defer { leave() }
    return try await closeSequenceLocked(key, undropped: undropped)
  }

  /// Records a worker's replication report for `key`; returns the current placement version.
  public func reportReplication(_ key: SequenceKey, progress: ReplicationProgress)
    async throws(HeteroKVError) -> UInt64
  {
    await enter()
    defer { leave() }
    return try await reportReplicationLocked(key, progress: progress)
  }

  /// Memory nodes that still hold rows of sequences the coordinator closed.
  public func pendingDrops() async throws(HeteroKVError) -> [PendingDrop] {
    await enter()
    defer { leave() }
    return try await pendingDropsLocked()
  }

  /// Records that `nodes` dropped the rows of `key` (or no longer hold them).
  public func rowsDropped(_ key: SequenceKey, nodes: [String]) async throws(HeteroKVError) {
    await enter()
    defer { leave() }
    try await rowsDroppedLocked(key, nodes: nodes)
  }

  /// Capacity, use, members and sequences.
  public func status() async throws(HeteroKVError) -> ClusterStatusView {
    await enter()
    defer { leave() }
    return try await statusLocked()
  }

  private func enter() async {
    if busy {
      await withCheckedContinuation { waiting.append($0) }
    } else {
      busy = true
    }
  }

  private func leave() {
    if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
  }

  /// The current state (tests compare it across restarts).
  public func snapshot() -> CoordinatorState { state }

  // MARK: Internals

  private func commit(_ change: StateChange) async throws(HeteroKVError) {
    var next = state
    next.apply(change)
    try await store.append(change, state: next)
    state = next
    gauges.update(state, used: usedBytes)
  }

  /// Memory-tier bytes for `tokens` tokens: fp16 values of every KV head plus fp16 keys of
  /// `keyHeads` heads, times the copies (saturating: a product past 2^64 cannot fit anyway).
  private func reservation(keyHeads: Int, tokens: Int, replicas: Int) -> UInt64 {
    let values = model.layers * model.kvHeads * model.headDim * 2
    let keys = keyHeads * model.headDim * 2
    return [UInt64(values + keys), UInt64(tokens), UInt64(replicas)].saturatingProduct
  }

  /// Longest member or worker id, in bytes.
  static let maxIDBytes = 128
  /// Largest capacity one memory node may register (1 PiB): sums of capacities stay far
  /// from overflow, and a typo of a few digits is refused.
  static let maxNodeCapacity: UInt64 = 1 << 50

  /// Refuses `bytes` more of the memory tier for `key` unless both the pool and every quota
  /// of a tenant owning its namespace have room for them.
  private func checkRoom(_ bytes: UInt64, for key: SequenceKey) throws(HeteroKVError) {
    try checkFree(bytes, for: key)
    try checkTenantQuotas(bytes, for: key)
  }

  private func checkFree(_ bytes: UInt64, for key: SequenceKey) throws(HeteroKVError) {
    let capacity = state.membership.up(.memoryNode).map(\.capacityBytes).saturatingSum
    let reserved = state.reservedBytes
    let free = capacity > reserved ? capacity - reserved : 0
    guard bytes <= free else {
      throw .resourceExhausted(
        "sequence \(key) needs \(bytes) bytes of the memory tier; the pool has \(free) free "
          + "(\(capacity) capacity, \(reserved) reserved)")
    }
  }

  /// Refuses `bytes` more for `key` when a tenant that owns its namespace would then reserve
  /// more than its quota across the pool: the per-node quota times the memory nodes up (the
  /// nodes enforce the per-node share themselves; this stops a sequence that cannot fit from
  /// being placed at all).
  private func checkTenantQuotas(_ bytes: UInt64, for key: SequenceKey) throws(HeteroKVError) {
    let owners = configuration.security.tenants.filter {
      $0.quotaBytes != nil && $0.namespaces.contains(key.namespace)
    }
    guard !owners.isEmpty else { return }
    let nodesUp = UInt64(state.membership.up(.memoryNode).count)
    for tenant in owners {
      let namespaces = Set(tenant.namespaces)
      let limit = [UInt64(max(0, tenant.quotaBytes ?? 0)), nodesUp].saturatingProduct
      let reserved = state.sequences.values.filter { namespaces.contains($0.key.namespace) }
        .map(\.reservedBytes).saturatingSum
      guard [reserved, bytes].saturatingSum <= limit else {
        throw .resourceExhausted(
          "sequence \(key) needs \(bytes) more bytes of the memory tier; tenant "
            + "\"\(tenant.name)\" has \(reserved) reserved of its quota of \(limit) "
            + "(\(tenant.quotaBytes ?? 0) per node x \(nodesUp) nodes up)")
      }
    }
  }

  private func validate(_ profiles: [HeadProfile]) throws(HeteroKVError) {
    let expected = model.layers * model.kvHeads
    guard profiles.count == expected else {
      throw .invalid(
        "expected a profile for each of the \(expected) KV heads of \(model.name) "
          + "(\(model.layers) layers x \(model.kvHeads)), got \(profiles.count)")
    }
    var seen = Set<Int>()
    var roles: [Int: HeadRole] = [:]
    for p in profiles {
      let at = "layer \(p.layer) head \(p.kvHead)"
      guard (0..<model.layers).contains(p.layer), (0..<model.kvHeads).contains(p.kvHead) else {
        throw .invalid(
          "\(at) is outside \(model.layers) layers x \(model.kvHeads) KV heads")
      }
      guard seen.insert(p.layer * model.kvHeads + p.kvHead).inserted else {
        throw .invalid("\(at) is reported twice")
      }
      guard p.stability.isFinite, (0...1).contains(p.stability) else {
        throw .invalid("\(at): stability must be in [0, 1], got \(p.stability)")
      }
      guard p.similarity.count == model.kvHeads,
        p.similarity.allSatisfy({ $0.isFinite && (0...1).contains($0) })
      else {
        throw .invalid(
          "\(at): similarity needs \(model.kvHeads) values in [0, 1], got \(p.similarity)")
      }
      roles[p.layer * model.kvHeads + p.kvHead] = p.role
    }
    for p in profiles {
      guard case .satellite(let pivot) = p.role else { continue }
      guard (0..<model.kvHeads).contains(pivot), pivot != p.kvHead,
        roles[p.layer * model.kvHeads + pivot] == .pivot
      else {
        throw .invalid(
          "layer \(p.layer) head \(p.kvHead): satellite of \(pivot), which is not a pivot of that layer"
        )
      }
    }
  }
}

/// The coordinator's gauges: members, sequences and pool bytes.
struct CoordinatorGauges: Sendable {
  let nodesUp: Gauge
  let nodesDown: Gauge
  let workersUp: Gauge
  let sequences: Gauge
  let capacity: Gauge
  let reserved: Gauge
  let used: Gauge
  let revision: Gauge
  let awaitingDrop: Gauge
  let underReplicated: Gauge

  init(factory: any MetricsFactory) {
    func gauge(_ label: String, _ dimensions: [(String, String)] = []) -> Gauge {
      Gauge(label: label, dimensions: dimensions, factory: factory)
    }
    nodesUp = gauge("hkv_coordinator_members", [("role", "memory_node"), ("status", "up")])
    nodesDown = gauge("hkv_coordinator_members", [("role", "memory_node"), ("status", "down")])
    workersUp = gauge("hkv_coordinator_members", [("role", "worker"), ("status", "up")])
    sequences = gauge("hkv_coordinator_sequences")
    capacity = gauge("hkv_coordinator_pool_capacity_bytes")
    reserved = gauge("hkv_coordinator_pool_reserved_bytes")
    used = gauge("hkv_coordinator_pool_used_bytes")
    revision = gauge("hkv_coordinator_state_revision")
    awaitingDrop = gauge("hkv_coordinator_sequences_awaiting_drop")
    underReplicated = gauge("hkv_coordinator_under_replicated_shards")
  }

  /// Shards under-replicated across every sequence, as the workers last reported.
  func recordReplication(_ reports: [SequenceKey: ReplicationProgress]) {
    underReplicated.record(reports.values.reduce(0) { $0 + $1.underReplicatedShards })
  }

  func update(_ state: CoordinatorState, used bytes: [String: UInt64]) {
    let nodes = state.membership.members.values.filter { $0.role == .memoryNode }
    let up = nodes.filter { $0.status == .up }
    nodesUp.record(up.count)
    nodesDown.record(nodes.count - up.count)
    workersUp.record(state.membership.up(.worker).count)
    sequences.record(state.sequences.count)
    capacity.record(Int64(clamping: up.map(\.capacityBytes).saturatingSum))
    reserved.record(Int64(clamping: state.reservedBytes))
    recordUsed(state.membership, used: bytes)
    revision.record(Int64(clamping: state.revision))
    awaitingDrop.record(state.pendingDrops.count)
  }

  /// Only the pool's used bytes: what a heartbeat changes.
  func recordUsed(_ membership: MembershipTable, used bytes: [String: UInt64]) {
    used.record(
      Int64(clamping: membership.up(.memoryNode).reduce(UInt64(0)) { $0 + (bytes[$1.id] ?? 0) }))
  }
}

extension Sequence<UInt64> {
  /// The sum, or UInt64.max where it would overflow.
  var saturatingSum: UInt64 {
    reduce(0) { total, x in
      let (sum, overflow) = total.addingReportingOverflow(x)
      return overflow ? .max : sum
    }
  }

  /// The product, or UInt64.max where it would overflow.
  var saturatingProduct: UInt64 {
    reduce(1) { total, x in
      let (product, overflow) = total.multipliedReportingOverflow(by: x)
      return overflow ? .max : product
    }
  }
}
