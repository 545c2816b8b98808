import HeteroKVWire
import HeteroKVCore

/// A sequence as the coordinator names it: a tenant namespace and a sequence number.
public struct SequenceKey: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
  public var namespace: UInt32
  public var sequence: UInt64

  public init(namespace: UInt32, sequence: UInt64) {
    self.namespace = namespace
    self.sequence = sequence
  }

  public static func < (a: Self, b: Self) -> Bool {
    (a.namespace, a.sequence) < (b.namespace, b.sequence)
  }

  /// `namespace/sequence`, e.g. `0/42`.
  public var description: String { "\(namespace)/\(sequence)" }
}

/// One memory node in a sequence's placement.
public struct PlacementTarget: Sendable, Hashable, Codable {
  public var nodeID: String
  public var dataAddress: String
  public var transport: String
  /// Rendezvous weight: the node's capacity when the sequence opened.
  public var weight: Double
}

/// Where a sequence's shards live: the memory nodes the rendezvous hash places onto, with a
/// version that changes whenever that set does, so a worker's cached copy can be checked.
public struct SequencePlacementRecord: Sendable, Hashable, Codable {
  /// Starts at 1.
  public var version: UInt64
  /// Copies of each shard.
  public var replicas: Int
  /// The nodes, sorted by id.
  public var targets: [PlacementTarget]
  /// Nodes that left the set since the sequence opened.
  public var departed: [String]

  /// The rendezvous placement over `targets`.
  public var placement: RendezvousPlacement {
    RendezvousPlacement(
      nodes: targets.map { PlacementNode(id: $0.nodeID, weight: $0.weight) }, replicas: replicas)
  }
}

/// Everything the coordinator knows of one sequence.
public struct SequenceRecord: Sendable, Hashable, Codable {
  public var key: SequenceKey
  /// The worker that opened it.
  public var worker: String
  /// The longest context it may reach.
  public var maxTokens: Int
  public var placement: SequencePlacementRecord
  /// Memory-tier bytes reserved for it (all copies).
  public var reservedBytes: UInt64
  /// Prefill length of the last profile report; 0 before one.
  public var prefillTokens: Int = 0
  /// The last reported head profiles.
  public var profiles: [HeadProfile] = []
  /// Budgets computed from them.
  public var budgets: SequenceBudgetPlan?
  /// The policy that computed them.
  public var policy: String = ""
}

/// One durable change to the coordinator's state. The store logs these; replaying them in
/// order onto the last snapshot gives back the state exactly.
public enum StateChange: Sendable, Hashable, Codable {
  /// A member joined or rejoined (a rejoining memory node lost its memory: it leaves every
  /// placement it was in).
  case registered(MembershipTable.Member)
  /// Leases lapsed: these members are down and leave every placement they were in.
  case markedDown([String])
  /// A sequence opened.
  case sequenceOpened(SequenceRecord)
  /// A sequence's profiles and budgets, and the reservation they imply.
  case profilesReported(
    SequenceKey, prefillTokens: Int, profiles: [HeadProfile], budgets: SequenceBudgetPlan,
    policy: String, reservedBytes: UInt64)
  /// A sequence closed.
  case sequenceClosed(SequenceKey)
  /// These memory nodes dropped the rows of a sequence the coordinator had closed (or are
  /// down, their memory gone with them).
  case rowsDropped(SequenceKey, nodes: [String])
}

/// The coordinator's durable state: membership, sequences, placements, profiles and budgets.
/// A pure value; `apply` is the only way it changes, so the log replays exactly.
public struct CoordinatorState: Sendable, Hashable, Codable {
  /// Members and their leases (lease times are reset on restore).
  public var membership: MembershipTable
  /// Open sequences.
  public var sequences: [SequenceKey: SequenceRecord] = [:]
  /// Changes applied since the beginning; the store uses it to skip replayed entries.
  public var revision: UInt64 = 0
  /// Sequences the coordinator closed because their worker is gone (its lease lapsed, or it
  /// registered again after a restart), with the memory nodes that may still hold their rows
  /// and must be told to drop them.
  public var pendingDrops: [SequenceKey: [String]] = [:]

  public init(leaseSeconds: Double) {
    membership = MembershipTable(leaseSeconds: leaseSeconds)
  }

  private enum CodingKeys: String, CodingKey {
    case membership, sequences, revision, pendingDrops
  }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    membership = try c.decode(MembershipTable.self, forKey: .membership)
    sequences = try c.decode([SequenceKey: SequenceRecord].self, forKey: .sequences)
    revision = try c.decode(UInt64.self, forKey: .revision)
    // Absent from snapshots written before workers held leases.
    pendingDrops =
      try c.decodeIfPresent([SequenceKey: [String]].self, forKey: .pendingDrops) ?? [:]
  }

  /// Applies one change.
  public mutating func apply(_ change: StateChange) {
    revision += 1
    switch change {
    case .registered(let member):
      let rejoining = membership.members[member.id] != nil
      membership.members[member.id] = member
      if rejoining && member.role == .memoryNode {
        leavePlacements([member.id])
        forgetDrops(on: [member.id])
      }
      // A worker that registers again restarted: its sequences died with it.
      if rejoining && member.role == .worker { closeSequences(of: [member.id]) }
    case .markedDown(let ids):
      let workers = ids.filter { membership.members[$0]?.role == .worker }
      membership.markDown(ids)
      closeSequences(of: workers)
      leavePlacements(ids)
      forgetDrops(on: ids)
    case .sequenceOpened(let record):
      sequences[record.key] = record
    case .profilesReported(let key, let prefill, let profiles, let budgets, let policy, let bytes):
      sequences[key]?.prefillTokens = prefill
      sequences[key]?.profiles = profiles
      sequences[key]?.budgets = budgets
      sequences[key]?.policy = policy
      sequences[key]?.reservedBytes = bytes
    case .sequenceClosed(let key):
      sequences[key] = nil
    case .rowsDropped(let key, let nodes):
      pendingDrops[key]?.removeAll { nodes.contains($0) }
      if pendingDrops[key]?.isEmpty == true { pendingDrops[key] = nil }
    }
  }

  /// Closes every sequence opened by `workers`, remembering the nodes that hold its rows.
  private mutating func closeSequences(of workers: [String]) {
    guard !workers.isEmpty else { return }
    for (key, record) in sequences where workers.contains(record.worker) {
      sequences[key] = nil
      let holders = record.placement.targets.map(\.nodeID).filter {
        membership.members[$0]?.status == .up
      }
      if !holders.isEmpty { pendingDrops[key] = holders }
    }
  }

  /// Nodes that went down or restarted hold nothing any more.
  private mutating func forgetDrops(on nodes: [String]) {
    for key in pendingDrops.keys {
      pendingDrops[key]!.removeAll { nodes.contains($0) }
      if pendingDrops[key]!.isEmpty { pendingDrops[key] = nil }
    }
  }

  private mutating func leavePlacements(_ ids: [String]) {
    for key in sequences.keys {
      let placement = sequences[key]!.placement
      let leaving = placement.targets.filter { ids.contains($0.nodeID) }.map(\.nodeID)
      guard !leaving.isEmpty else { continue }
      sequences[key]!.placement.targets.removeAll { leaving.contains($0.nodeID) }
      sequences[key]!.placement.departed.append(contentsOf: leaving)
      sequences[key]!.placement.version += 1
    }
  }

  /// Bytes reserved by every open sequence.
  public var reservedBytes: UInt64 { sequences.values.map(\.reservedBytes).saturatingSum }
}
