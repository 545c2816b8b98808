import HeteroKVConfig
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVMemoryClient
import HeteroKVWire

/// Where a sequence's shards live, as the coordinator placed them.
public struct SequencePlacement: Sendable, Hashable {
  /// Changes whenever the node set changes.
  public var version: UInt64
  /// Copies of each shard.
  public var replication: Int
  /// The nodes placed onto, with their data-plane endpoints and placement weights.
  public var nodes: [(endpoint: MemoryNodeEndpoint, weight: Double)]
  /// Nodes that left the set since the sequence opened.
  public var departed: [String]

  public init(
    version: UInt64, replication: Int, nodes: [(endpoint: MemoryNodeEndpoint, weight: Double)],
    departed: [String] = []
  ) {
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

  public static func == (a: SequencePlacement, b: SequencePlacement) -> Bool {
    a.version == b.version && a.replication == b.replication && a.departed == b.departed
      && a.nodes.map(\.endpoint) == b.nodes.map(\.endpoint)
      && a.nodes.map(\.weight) == b.nodes.map(\.weight)
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(version)
    hasher.combine(nodes.map(\.endpoint))
  }
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
  func openSequence(_ ref: SequenceRef, worker: String, maxTokens: Int) async throws(WorkerError)
    -> SequencePlacement
  /// The sequence's current placement.
  func placement(_ ref: SequenceRef) async throws(WorkerError) -> SequencePlacement
  /// Reports head profiles after a prefill of `prefillTokens`; returns the budgets.
  func reportProfiles(_ ref: SequenceRef, prefillTokens: Int, profiles: [HeadProfile])
    async throws(WorkerError) -> SequenceBudgets
  /// Closes the sequence, releasing its reservation.
  func closeSequence(_ ref: SequenceRef) async throws(WorkerError)
}

/// `ClusterControl` through the coordinator's gRPC service, one connection per call.
public struct CoordinatorControl: ClusterControl {
  /// The coordinator's address.
  public let address: HostPort
  let security: ControlPlaneSecurity
  let timeout: Duration

  public init(
    address: HostPort, security: ControlPlaneSecurity = .none, timeout: Duration = .seconds(10)
  ) {
    self.address = address
    self.security = security
    self.timeout = timeout
  }

  func call<T: Sendable>(_ body: @Sendable (CoordinatorClient) async throws -> T)
    async throws(WorkerError) -> T
  {
    do {
      return try await CoordinatorClient.with(
        address: address, security: security, timeout: timeout, body)
    } catch let error as CoordinatorClientError {
      let kind: WorkerError.Kind =
        switch error.error.code {
        case .resourceExhausted: .resourceExhausted
        case .notFound: .unknownSequence
        case .invalidArgument: .invalidArgument
        case .failedPrecondition: .failedPrecondition
        default: .coordinator
        }
      throw WorkerError(kind, error.description)
    } catch let error as WorkerError {
      throw error
    } catch {
      throw WorkerError(.coordinator, "coordinator at \(address): \(error)")
    }
  }

  public func openSequence(_ ref: SequenceRef, worker: String, maxTokens: Int)
    async throws(WorkerError) -> SequencePlacement
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

  public func placement(_ ref: SequenceRef) async throws(WorkerError) -> SequencePlacement {
    let answer = try await call { client in
      try await client.placement(namespace: ref.namespace, sequence: ref.sequence)
    }
    return try Self.placement(answer)
  }

  public func reportProfiles(_ ref: SequenceRef, prefillTokens: Int, profiles: [HeadProfile])
    async throws(WorkerError) -> SequenceBudgets
  {
    let request = Heterokv_V1_ReportProfilesRequest.with {
      $0.ref = ref.proto
      $0.prefillTokens = UInt64(prefillTokens)
      $0.heads = profiles.map(\.report)
    }
    let answer = try await call { client in try await client.reportProfiles(request) }
    guard let policy = BudgetPolicyKind(rawValue: answer.policy) else {
      throw WorkerError(
        .coordinator, "the coordinator answered an unknown policy \"\(answer.policy)\"")
    }
    let heads = answer.heads.map { h in
      let role: HeadRole =
        switch h.role {
        case "anchor": .anchor
        case "pivot": .pivot
        case "satellite": .satellite(pivot: Int(h.pivot))
        default: .volatile
        }
      return HeadBudget(
        layer: Int(h.layer), kvHead: Int(h.kvHead), role: role, stability: h.stability,
        ratio: 0, cap: Int(h.cap))
    }
    return SequenceBudgets(policy: policy, heads: heads)
  }

  public func closeSequence(_ ref: SequenceRef) async throws(WorkerError) {
    _ = try await call { client in
      try await client.closeSequence(namespace: ref.namespace, sequence: ref.sequence)
    }
  }

  static func placement(_ p: Heterokv_V1_SequencePlacement) throws(WorkerError)
    -> SequencePlacement
  {
    var nodes: [(endpoint: MemoryNodeEndpoint, weight: Double)] = []
    for node in p.nodes {
      guard let address = HostPort(node.dataAddress) else {
        throw WorkerError(
          .coordinator, "node \(node.nodeID) has a bad data address \"\(node.dataAddress)\"")
      }
      let transport = DataPlaneTransportKind(rawValue: node.transport) ?? .tcp
      nodes.append(
        (MemoryNodeEndpoint(id: node.nodeID, data: address, transport: transport), node.weight))
    }
    guard !nodes.isEmpty else {
      throw WorkerError(.resourceExhausted, "the coordinator placed the sequence on no memory node")
    }
    return SequencePlacement(
      version: p.version, replication: max(1, Int(p.replication)), nodes: nodes,
      departed: p.departed)
  }
}

extension HeadProfile {
  /// The wire form.
  var report: Heterokv_V1_HeadProfileReport {
    .with {
      $0.layer = UInt32(layer)
      $0.kvHead = UInt32(kvHead)
      $0.stability = stability
      $0.similarity = similarity
      $0.role = role.name
      if case .satellite(let pivot) = role { $0.pivot = UInt32(pivot) }
    }
  }
}
