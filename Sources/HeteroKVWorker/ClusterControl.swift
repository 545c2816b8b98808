import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVMemoryClient
import HeteroKVWire
import Synchronization

/// A memory node of a sequence's placement: how to reach it and its placement weight.
public struct PlacedNode: Sendable, Hashable {
  public var endpoint: MemoryNodeEndpoint
  public var weight: Double

  public init(endpoint: MemoryNodeEndpoint, weight: Double) {
    self.endpoint = endpoint
    self.weight = weight
  }
}

/// Where a sequence's shards live, as the coordinator placed them.
public struct SequencePlacement: Sendable, Hashable {
  /// Changes whenever the node set changes.
  public var version: UInt64
  /// Copies of each shard.
  public var replication: Int
  /// The nodes placed onto.
  public var nodes: [PlacedNode]
  /// Nodes that left the set since the sequence opened.
  public var departed: [String]

  public init(version: UInt64, replication: Int, nodes: [PlacedNode], departed: [String] = []) {
    self.version = version
    self.replication = replication
    self.nodes = nodes
    self.departed = departed
  }

  /// The rendezvous placement every process computes the same way.
  public var rendezvous: RendezvousPlacement {
    RendezvousPlacement(
      nodes: nodes.map { PlacementNode(id: $0.endpoint.id, weight: $0.weight) },
      replicas: replication)
  }
}

/// The coordinator address that answered last.
final class LeaderHint: Sendable {
  private let address = Mutex<HostPort?>(nil)
  func get() -> HostPort? { address.withLock { $0 } }
  func set(_ value: HostPort) { address.withLock { $0 = value } }
}

/// The budgets the coordinator assigned after a profile report: the policy it applied and one
/// entry per head, in (layer, KV head) order.
public struct SequenceBudgets: Sendable, Hashable {
  /// The policy the caps follow.
  public var policy: BudgetPolicyKind
  /// Per head: its role (as the coordinator recorded it) and its token cap.
  public var heads: [HeadBudget]

  public init(policy: BudgetPolicyKind, heads: [HeadBudget]) {
    self.policy = policy
    self.heads = heads
  }
}

/// What the worker needs from the control plane, as a seam: the coordinator over gRPC in a
/// cluster, anything else in tests.
public protocol ClusterControl: Sendable {
  /// Opens (or reopens) a sequence and returns its placement.
  func openSequence(_ ref: SequenceRef, worker: String, maxTokens: Int) async throws(HeteroKVError)
    -> SequencePlacement
  /// The sequence's current placement.
  func placement(_ ref: SequenceRef) async throws(HeteroKVError) -> SequencePlacement
  /// Reports head profiles after a prefill of `prefillTokens`; returns the budgets.
  func reportProfiles(_ ref: SequenceRef, prefillTokens: Int, profiles: [HeadProfile])
    async throws(HeteroKVError) -> SequenceBudgets
  /// Closes the sequence, releasing its reservation; `undroppedNodes` could not be reached to
  /// drop its rows (the control plane has them dropped later).
  func closeSequence(_ ref: SequenceRef, undroppedNodes: [String]) async throws(HeteroKVError)
  /// Reports the sequence's copies after a repair pass; returns the current placement version.
  func reportReplication(_ ref: SequenceRef, report: ReplicationReport)
    async throws(HeteroKVError) -> UInt64
}

/// A worker's account of a sequence's copies, sent to the coordinator after each repair pass.
public struct ReplicationReport: Sendable, Hashable {
  /// The placement version the worker repaired to.
  public var placementVersion: UInt64
  /// Shards held by fewer nodes than the placement names.
  public var underReplicatedShards: Int
  /// Shards and bytes copied to new replicas since the sequence opened.
  public var shardsCopied: Int
  public var bytesCopied: Int

  public init(
    placementVersion: UInt64, underReplicatedShards: Int, shardsCopied: Int, bytesCopied: Int
  ) {
    self.placementVersion = placementVersion
    self.underReplicatedShards = underReplicatedShards
    self.shardsCopied = shardsCopied
    self.bytesCopied = bytesCopied
  }
}

extension ClusterControl {
  /// Closes the sequence, every node's rows already dropped.
  public func closeSequence(_ ref: SequenceRef) async throws(HeteroKVError) {
    try await closeSequence(ref, undroppedNodes: [])
  }

  /// Control planes that keep no replication figures take the report and change nothing.
  public func reportReplication(_ ref: SequenceRef, report: ReplicationReport)
    async throws(HeteroKVError) -> UInt64
  {
    report.placementVersion
  }
}

/// `ClusterControl` through the coordinator's gRPC service, one connection per call. With
/// several addresses (the replicas of a replicated coordinator) each call goes to the one that
/// led last, follows a standby's redirect, and moves on when one cannot be reached.
public struct CoordinatorControl: ClusterControl {
  /// The coordinator's addresses.
  public let addresses: [HostPort]
  let security: ControlPlaneSecurity
  let timeout: Duration
  private let leader = LeaderHint()

  /// The coordinator at `address`.
  public init(
    address: HostPort, security: ControlPlaneSecurity = .none, timeout: Duration = .seconds(10)
  ) {
    self.init(addresses: [address], security: security, timeout: timeout)
  }

  /// The coordinator that leads among `addresses` (at least one).
  public init(
    addresses: [HostPort], security: ControlPlaneSecurity = .none,
    timeout: Duration = .seconds(10)
  ) {
    precondition(!addresses.isEmpty)
    self.addresses = addresses
    self.security = security
    self.timeout = timeout
  }

  /// The first address (the only one of a single coordinator).
  public var address: HostPort { addresses[0] }

  func call<T: Sendable>(_ body: @Sendable (CoordinatorClient) async throws -> T)
    async throws(HeteroKVError) -> T
  {
    do {
      // A replicated coordinator may be between leaders: wait out a takeover.
      let (result, answered) = try await CoordinatorClient.withLeader(
        among: addresses, preferring: leader.get(), security: security, timeout: timeout,
        patience: addresses.count > 1 ? timeout * 3 : .zero, body)
      leader.set(answered)
      return result
    } catch let error as HeteroKVError {
      throw error
    } catch {
      throw HeteroKVError(
        .unavailable, "the coordinator at \(addresses.map(\.description)): \(error)",
        cause: error)
    }
  }

  public func openSequence(_ ref: SequenceRef, worker: String, maxTokens: Int)
    async throws(HeteroKVError) -> SequencePlacement
  {
    let answer = try await call { client in
      try await client.openSequence(
        .with {
          $0.ref = ref.proto
          $0.workerID = worker
          $0.maxTokens = UInt64(maxTokens)
        })
    }
    return try Self.placement(answer)
  }

  public func placement(_ ref: SequenceRef) async throws(HeteroKVError) -> SequencePlacement {
    let answer = try await call { client in
      try await client.placement(namespace: ref.namespace, sequence: ref.sequence)
    }
    return try Self.placement(answer)
  }

  public func reportProfiles(_ ref: SequenceRef, prefillTokens: Int, profiles: [HeadProfile])
    async throws(HeteroKVError) -> SequenceBudgets
  {
    let request = Heterokv_V1_ReportProfilesRequest.with {
      $0.ref = ref.proto
      $0.prefillTokens = UInt64(prefillTokens)
      $0.heads = profiles.map(\.report)
    }
    let answer = try await call { client in try await client.reportProfiles(request) }
    guard let policy = BudgetPolicyKind(rawValue: answer.policy) else {
      throw HeteroKVError(
        .internalError, "the coordinator answered an unknown policy \"\(answer.policy)\"")
    }
    var heads: [HeadBudget] = []
    for h in answer.heads {
      guard let role = HeadRole(name: h.role, pivot: Int(h.pivot)) else {
        throw HeteroKVError(.unavailable, "the coordinator answered an unknown role \"\(h.role)\"")
      }
      heads.append(
        HeadBudget(
          layer: Int(h.layer), kvHead: Int(h.kvHead), role: role, stability: h.stability,
          ratio: 0, cap: Int(h.cap)))
    }
    return SequenceBudgets(policy: policy, heads: heads)
  }

  public func closeSequence(_ ref: SequenceRef, undroppedNodes: [String])
    async throws(HeteroKVError)
  {
    _ = try await call { client in
      try await client.releaseSequence(
        .with {
          $0.ref = ref.proto
          $0.undroppedNodes = undroppedNodes
        })
    }
  }

  public func reportReplication(_ ref: SequenceRef, report: ReplicationReport)
    async throws(HeteroKVError) -> UInt64
  {
    let answer = try await call { client in
      try await client.reportReplication(
        .with {
          $0.ref = ref.proto
          $0.placementVersion = report.placementVersion
          $0.underReplicatedShards = UInt32(clamping: report.underReplicatedShards)
          $0.shardsCopied = UInt64(report.shardsCopied)
          $0.bytesCopied = UInt64(report.bytesCopied)
        })
    }
    return answer.placementVersion
  }

  static func placement(_ p: Heterokv_V1_SequencePlacement) throws(HeteroKVError)
    -> SequencePlacement
  {
    var nodes: [PlacedNode] = []
    for node in p.nodes {
      guard let address = HostPort(node.dataAddress) else {
        throw HeteroKVError(
          .unavailable, "node \(node.nodeID) has a bad data address \"\(node.dataAddress)\"")
      }
      let transport = DataPlaneTransportKind(rawValue: node.transport) ?? .tcp
      nodes.append(
        PlacedNode(
          endpoint: MemoryNodeEndpoint(id: node.nodeID, data: address, transport: transport),
          weight: node.weight))
    }
    guard !nodes.isEmpty else {
      throw HeteroKVError(
        .resourceExhausted, "the coordinator placed the sequence on no memory node")
    }
    return SequencePlacement(
      version: p.version, replication: max(1, Int(p.replication)), nodes: nodes,
      departed: p.departed)
  }
}
