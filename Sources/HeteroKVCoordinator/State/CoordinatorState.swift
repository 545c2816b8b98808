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
  /// The worker's incarnation when it opened the sequence, when the worker is a member (nil
  /// for a worker that never registered, and in records written before workers held leases).
  public var workerIncarnation: UInt64? = nil
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
  /// Sequences whose worker is gone (down, or registered again after a restart) closed by the
  /// coordinator: their reservations freed, their rows to be dropped by the nodes that are up.
  case sequencesReclaimed([SequenceKey])
  /// A sequence closed by its worker, which could not reach these nodes to drop its rows.
  case sequenceClosedLeavingRows(SequenceKey, nodes: [String])
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
  /// Sequences closed with rows left behind (their worker is gone, or could not reach some
  /// nodes), with the memory nodes that may still hold those rows and must be told to drop
  /// them.
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
    case .markedDown(let ids):
      membership.markDown(ids)
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
    case .sequencesReclaimed(let keys):
      for key in keys {
        guard let record = sequences.removeValue(forKey: key) else { continue }
        remember(record.placement.targets.map(\.nodeID), holding: key)
      }
    case .sequenceClosedLeavingRows(let key, let nodes):
      sequences[key] = nil
      remember(nodes, holding: key)
    }
  }

  /// Sequences whose worker is a member that is down, or that registered again since it
  /// opened them (a restarted worker lost its sequences).
  public var orphanedSequences: [SequenceKey] {
    sequences.values.filter { record in
      guard let worker = membership.members[record.worker], worker.role == .worker else {
        return false
      }
      if worker.status == .down { return true }
      if let opened = record.workerIncarnation { return opened != worker.incarnation }
      return false
    }.map(\.key).sorted()
  }

  /// Records that the nodes of `nodes` that are up may hold rows of `key` to drop.
  private mutating func remember(_ nodes: [String], holding key: SequenceKey) {
    var list = pendingDrops[key] ?? []
    for node in nodes where membership.members[node]?.status == .up && !list.contains(node) {
      list.append(node)
    }
    if !list.isEmpty { pendingDrops[key] = list }
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
