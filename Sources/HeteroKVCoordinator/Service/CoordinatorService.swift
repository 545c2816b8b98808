import GRPCCore
import HeteroKVCore
import HeteroKVSettings
import HeteroKVWire

/// Which coordinator serves this process's calls: the one it leads with, or none while it
/// stands by (then calls are refused with a redirect to the leader).
public protocol CoordinatorAccess: Sendable {
  /// The cluster (the same for every replica).
  var configuration: ClusterConfiguration { get }
  /// The coordinator while this process leads; else a ``CoordinatorRedirect`` error.
  func leading() throws(HeteroKVError) -> Coordinator
  /// This process's replica id when the coordinator is replicated.
  var replicaID: String? { get }
  /// The coordinator reads are answered by: the leading one, or (while no leader can be
  /// found, e.g. etcd has no quorum) the last one this process led with, on its last state.
  func reading() throws(HeteroKVError) -> Coordinator
}

extension CoordinatorAccess {
  public var replicaID: String? { nil }
  public func reading() throws(HeteroKVError) -> Coordinator { try leading() }
}

/// A coordinator that always leads: the file store's single owner.
public struct FixedCoordinator: CoordinatorAccess {
  public let coordinator: Coordinator
  public var configuration: ClusterConfiguration { coordinator.configuration }
  public func leading() throws(HeteroKVError) -> Coordinator { coordinator }
}

/// The coordinator's gRPC service (`Proto/heterokv/v1/coordinator.proto`): each call is checked
/// and bounded, handed to the `Coordinator` actor, and its refusals become gRPC status codes
/// with the coordinator's message.
public struct CoordinatorService: Heterokv_V1_Coordinator.SimpleServiceProtocol {
  /// Most heads one profile report may carry.
  public static let maxReportedHeads = 1 << 16

  let access: any CoordinatorAccess

  /// The service over `coordinator`, which always leads (a file store).
  public init(coordinator: Coordinator) {
    self.access = FixedCoordinator(coordinator: coordinator)
  }

  /// The service over whichever coordinator `access` says leads; while this process stands
  /// by, every call is refused with the leader's address (``CoordinatorRedirect``).
  public init(access: any CoordinatorAccess) {
    self.access = access
  }

  /// The coordinator this process leads with, or the redirect to the leader.
  var coordinator: Coordinator {
    get throws(HeteroKVError) { try access.leading() }
  }

  /// The coordinator that answers reads (``CoordinatorAccess/reading()``).
  var reader: Coordinator {
    get throws(HeteroKVError) { try access.reading() }
  }

  public func register(request: Heterokv_V1_RegisterRequest, context: ServerContext) async throws
    -> Heterokv_V1_RegisterResponse
  {
    let role: MembershipTable.Role
    switch request.role {
    case .memoryNode: role = .memoryNode
    case .worker: role = .worker
    default: throw RPCError(code: .invalidArgument, message: "role must be memory node or worker")
    }
    let incarnation = try await call {
      try await coordinator.register(
        id: request.memberID, role: role, dataAddress: request.dataAddress,
        controlAddress: request.controlAddress, capacityBytes: request.capacityBytes,
        transport: request.transport.isEmpty ? "tcp" : request.transport)
    }
    let config = access.configuration
    return .with {
      $0.incarnation = incarnation
      $0.leaseSeconds = config.coordinator?.leaseSeconds ?? 10
      $0.heartbeatSeconds = config.coordinator?.heartbeatSeconds ?? 3
      $0.cluster = config.name
      $0.replication = UInt32(config.replication)
      $0.policy = .with {
        let b = config.budgets
        $0.policy = b.policy.rawValue
        $0.memoryFraction = b.memoryFraction
        $0.minTokens = UInt32(clamping: b.minTokens)
        $0.maxTokens = UInt32(clamping: b.maxTokens ?? 0)
        $0.fullHeadCost = b.fullHeadCost
        $0.stabilityThreshold = b.stabilityThreshold
        $0.similarityThreshold = b.similarityThreshold
        $0.profileIntervalSteps = UInt32(clamping: b.profileIntervalSteps)
      }
    }
  }

  public func heartbeat(request: Heterokv_V1_HeartbeatRequest, context: ServerContext)
    async throws -> Heterokv_V1_HeartbeatResponse
  {
    let (accepted, reason) = try await call {
      try await coordinator.heartbeat(
        id: request.memberID, incarnation: request.incarnation, usedBytes: request.usedBytes)
    }
    return .with {
      $0.accepted = accepted
      $0.reason = reason
    }
  }

  public func openSequence(request: Heterokv_V1_OpenSequenceRequest, context: ServerContext)
    async throws -> Heterokv_V1_SequencePlacement
  {
    guard request.hasRef else { throw RPCError(code: .invalidArgument, message: "ref is required") }
    let record = try await call {
      try await coordinator.openSequence(
        key: SequenceKey(request.ref), worker: request.workerID,
        maxTokens: Int(clamping: request.maxTokens))
    }
    return Heterokv_V1_SequencePlacement(record)
  }

  public func getPlacement(request: Heterokv_V1_SequenceRef, context: ServerContext) async throws
    -> Heterokv_V1_SequencePlacement
  {
    let record = try await call { try await reader.sequence(SequenceKey(request)) }
    return Heterokv_V1_SequencePlacement(record)
  }

  public func reportProfiles(request: Heterokv_V1_ReportProfilesRequest, context: ServerContext)
    async throws -> Heterokv_V1_SequenceBudgets
  {
    guard request.hasRef else { throw RPCError(code: .invalidArgument, message: "ref is required") }
    guard request.heads.count <= Self.maxReportedHeads else {
      throw RPCError(
        code: .invalidArgument,
        message: "\(request.heads.count) heads exceeds the limit of \(Self.maxReportedHeads)")
    }
    let profiles = try request.heads.map(HeadProfile.init)
    let record = try await call {
      try await coordinator.reportProfiles(
        key: SequenceKey(request.ref), prefillTokens: Int(clamping: request.prefillTokens),
        profiles: profiles)
    }
    return Heterokv_V1_SequenceBudgets(record, layer: nil)
  }

  public func getBudgets(request: Heterokv_V1_GetBudgetsRequest, context: ServerContext)
    async throws -> Heterokv_V1_GetBudgetsResponse
  {
    let layer = request.layer >= 0 ? Int(request.layer) : nil
    let model = access.configuration.model!
    if let layer, !(0..<model.layers).contains(layer) {
      throw RPCError(
        code: .invalidArgument,
        message:
          "layer \(layer) is outside 0..<\(model.layers) of \(model.name)")
    }
    let records = try await call {
      try await reader.budgets(of: request.hasRef ? SequenceKey(request.ref) : nil)
    }
    return .with { $0.sequences = records.map { Heterokv_V1_SequenceBudgets($0, layer: layer) } }
  }

  public func closeSequence(request: Heterokv_V1_SequenceRef, context: ServerContext) async throws
    -> Heterokv_V1_CloseSequenceResponse
  {
    let released = try await call { try await coordinator.closeSequence(SequenceKey(request)) }
    return .with { $0.releasedBytes = released }
  }

  public func releaseSequence(
    request: Heterokv_V1_ReleaseSequenceRequest, context: ServerContext
  ) async throws -> Heterokv_V1_CloseSequenceResponse {
    guard request.undroppedNodes.count <= 4096,
      request.undroppedNodes.allSatisfy({ $0.utf8.count <= 128 })
    else {
      throw RPCError(code: .invalidArgument, message: "at most 4096 node ids of 128 bytes")
    }
    let released = try await call {
      try await coordinator.closeSequence(
        SequenceKey(request.ref), undropped: request.undroppedNodes)
    }
    return .with { $0.releasedBytes = released }
  }

  public func listNodes(request: Heterokv_V1_ListNodesRequest, context: ServerContext) async throws
    -> Heterokv_V1_ListNodesResponse
  {
    let members = try await call { try await reader.members() }
    return .with { $0.members = members.map(Heterokv_V1_MemberInfo.init) }
  }

  public func getStatus(request: Heterokv_V1_GetStatusRequest, context: ServerContext) async throws
    -> Heterokv_V1_ClusterStatus
  {
    let status = try await call { try await reader.status() }
    return .with {
      $0.cluster = status.cluster
      $0.policy = status.policy
      $0.replication = UInt32(status.replication)
      $0.capacityBytes = status.capacityBytes
      $0.usedBytes = status.usedBytes
      $0.reservedBytes = status.reservedBytes
      $0.nodesUp = UInt32(status.nodesUp)
      $0.nodesDown = UInt32(status.nodesDown)
      $0.workersUp = UInt32(status.workersUp)
      $0.sequencesAwaitingDrop = UInt32(clamping: status.sequencesAwaitingDrop)
      let settings = access.configuration.coordinator
      $0.store = (settings?.store ?? .file).rawValue
      $0.leader = access.replicaID ?? ""
      $0.replicas = settings?.replicas.map(\.id) ?? []
      $0.sequences = status.sequences.map { record in
        let progress = status.copies[record.key]
        return .with {
          $0.ref = Heterokv_V1_SequenceRef(record.key)
          $0.workerID = record.worker
          $0.maxTokens = UInt64(record.maxTokens)
          $0.prefillTokens = UInt64(record.prefillTokens)
          $0.placementVersion = record.placement.version
          $0.reservedBytes = record.reservedBytes
          $0.headCount = UInt32(record.profiles.count)
          $0.repairedVersion = progress?.placementVersion ?? 0
          $0.underReplicatedShards = UInt32(clamping: progress?.underReplicatedShards ?? 0)
          $0.shardsCopied = progress?.shardsCopied ?? 0
        }
      }
    }
  }

  public func reportReplication(request: Heterokv_V1_ReplicationReport, context: ServerContext)
    async throws -> Heterokv_V1_ReplicationReportResponse
  {
    guard request.underReplicatedShards <= 1 << 30 else {
      throw RPCError(code: .invalidArgument, message: "under_replicated_shards is implausible")
    }
    let version = try await call {
      try await coordinator.reportReplication(
        SequenceKey(request.ref),
        progress: ReplicationProgress(
          placementVersion: request.placementVersion,
          underReplicatedShards: Int(request.underReplicatedShards),
          shardsCopied: request.shardsCopied, bytesCopied: request.bytesCopied))
    }
    return .with { $0.placementVersion = version }
  }

  /// Runs `body`, turning a `HeteroKVError` into the matching gRPC status.
  private func call<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    do {
      return try await body()
    } catch let error as HeteroKVError {
      throw error.rpcError
    }
  }
}

extension SequenceKey {
  init(_ ref: Heterokv_V1_SequenceRef) {
    self.init(namespace: ref.namespace, sequence: ref.sequence)
  }
}

extension Heterokv_V1_SequenceRef {
  init(_ key: SequenceKey) {
    self = .with {
      $0.namespace = key.namespace
      $0.sequence = key.sequence
    }
  }
}

extension Heterokv_V1_SequencePlacement {
  init(_ record: SequenceRecord) {
    self = .with {
      $0.ref = Heterokv_V1_SequenceRef(record.key)
      $0.version = record.placement.version
      $0.replication = UInt32(record.placement.replicas)
      $0.nodes = record.placement.targets.map { target in
        .with {
          $0.nodeID = target.nodeID
          $0.dataAddress = target.dataAddress
          $0.transport = target.transport
          $0.weight = target.weight
        }
      }
      $0.departed = record.placement.departed
      $0.reservedBytes = record.reservedBytes
    }
  }
}

extension Heterokv_V1_SequenceBudgets {
  init(_ record: SequenceRecord, layer: Int?) {
    self = .with {
      $0.ref = Heterokv_V1_SequenceRef(record.key)
      $0.policy = record.policy
      $0.prefillTokens = UInt64(record.prefillTokens)
      $0.totalTokens = UInt64(record.budgets?.totalTokens ?? 0)
      let profiles = record.profiles
      $0.heads = (record.budgets?.heads ?? []).enumerated().compactMap { i, budget in
        if let layer, budget.layer != layer { return nil }
        let profile = profiles[i]
        var pivot = 0
        var similarity = 0.0
        if case .satellite(let p) = budget.role {
          pivot = p
          similarity = profile.similarity[p]
        } else {
          similarity =
            profile.similarity.enumerated().filter { $0.offset != budget.kvHead }.map(\.element)
            .max() ?? 0
        }
        return .with {
          $0.layer = UInt32(budget.layer)
          $0.kvHead = UInt32(budget.kvHead)
          $0.role = budget.role.name
          $0.pivot = UInt32(pivot)
          $0.stability = budget.stability
          $0.similarity = similarity
          $0.cap = UInt64(budget.cap)
        }
      }
    }
  }
}

extension Heterokv_V1_MemberInfo {
  init(_ view: MemberView) {
    self = .with {
      $0.memberID = view.member.id
      $0.role = view.member.role == .memoryNode ? .memoryNode : .worker
      $0.dataAddress = view.member.dataAddress
      $0.controlAddress = view.member.controlAddress
      $0.capacityBytes = view.member.capacityBytes
      $0.usedBytes = view.usedBytes
      $0.status = view.member.status.rawValue
      $0.incarnation = view.member.incarnation
      $0.leaseRemainingSeconds = view.leaseRemainingSeconds
      $0.transport = view.member.transport
    }
  }
}
