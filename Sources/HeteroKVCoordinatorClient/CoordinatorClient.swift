import HeteroKVCore
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import HeteroKVDaemon
import HeteroKVWire

/// A connection to the coordinator for members and the admin CLI. Every call has a deadline,
/// and a coordinator that cannot be reached or that refuses a call surfaces as a
/// `HeteroKVError` that names the address and says what happened.
public struct CoordinatorClient: Sendable {
  /// The coordinator's gRPC address.
  public let address: HostPort
  let stub: Heterokv_V1_Coordinator.Client<HTTP2ClientTransport.Posix>
  let timeout: Duration

  /// Runs `body` with a client to `address`, closed afterwards.
  public static func with<Result: Sendable>(
    address: HostPort, security: ControlPlaneSecurity = .none, timeout: Duration = .seconds(5),
    _ body: (CoordinatorClient) async throws -> Result
  ) async throws -> Result {
    try await ControlPlaneClient.with(address: address, security: security) { grpc in
      try await body(
        CoordinatorClient(address: address, stub: .init(wrapping: grpc), timeout: timeout))
    }
  }

  /// Runs `body` with a client of the coordinator that leads among `addresses` (the replicas
  /// of a replicated coordinator, or one address): it starts at the first (or at `leader`,
  /// the one that led last), follows a standby's redirect to the leader it names, and moves to
  /// the next address when one cannot be reached. `body` may thus run more than once; the
  /// coordinator's calls are safe to repeat (opens are idempotent per worker, a repeated close
  /// answers not-found). Returns the result and the address that answered.
  ///
  /// When every address failed, it starts over (every 200 ms) until `patience` has passed:
  /// long enough, with a replicated coordinator, for a standby to take over (two leases).
  public static func withLeader<Result: Sendable>(
    among addresses: [HostPort], preferring leader: HostPort? = nil,
    security: ControlPlaneSecurity = .none, timeout: Duration = .seconds(5),
    patience: Duration = .zero, _ body: (CoordinatorClient) async throws -> Result
  ) async throws -> (result: Result, address: HostPort) {
    precondition(!addresses.isEmpty)
    let deadline = ContinuousClock.now + patience
    while true {
      do {
        return try await leaderOnce(
          among: addresses, preferring: leader, security: security, timeout: timeout, body)
      } catch let error as HeteroKVError where error.code == .unavailable {
        guard ContinuousClock.now < deadline else { throw error }
        try await Task.sleep(for: .milliseconds(200))
      }
    }
  }

  private static func leaderOnce<Result: Sendable>(
    among addresses: [HostPort], preferring leader: HostPort?, security: ControlPlaneSecurity,
    timeout: Duration, _ body: (CoordinatorClient) async throws -> Result
  ) async throws -> (result: Result, address: HostPort) {
    var queue = addresses
    if let leader, let i = queue.firstIndex(of: leader) { queue.swapAt(0, i) }
    var tried: [String] = []
    var redirects = 0
    while !queue.isEmpty {
      let address = queue.removeFirst()
      do {
        let result = try await with(
          address: address, security: security, timeout: timeout, body)
        return (result, address)
      } catch let error as HeteroKVError where error.code == .unavailable {
        tried.append("\(address): \(error.message)")
        if let named = CoordinatorRedirect.leader(in: error.message), let next = HostPort(named),
          next != address, redirects < addresses.count
        {
          redirects += 1
          queue.removeAll { $0 == next }
          queue.insert(next, at: 0)
        }
      }
    }
    throw HeteroKVError(
      .unavailable,
      "no coordinator leads among \(addresses.map(\.description).joined(separator: ", ")): "
        + tried.joined(separator: "; "))
  }

  private var options: CallOptions {
    var options = CallOptions.defaults
    options.timeout = timeout
    return options
  }

  /// Performs one call, mapping gRPC failures to `HeteroKVError`s.
  func perform<T: Sendable>(_ what: String, _ body: (CallOptions) async throws -> T) async throws
    -> T
  {
    do {
      return try await body(options)
    } catch let error as RPCError {
      throw HeteroKVError(error, peer: "the coordinator at \(address)", operation: what)
    }
  }

  public func register(_ request: Heterokv_V1_RegisterRequest) async throws
    -> Heterokv_V1_RegisterResponse
  {
    try await perform("Register") { try await stub.register(request, options: $0) }
  }

  public func heartbeat(_ request: Heterokv_V1_HeartbeatRequest) async throws
    -> Heterokv_V1_HeartbeatResponse
  {
    try await perform("Heartbeat") { try await stub.heartbeat(request, options: $0) }
  }

  public func openSequence(_ request: Heterokv_V1_OpenSequenceRequest) async throws
    -> Heterokv_V1_SequencePlacement
  {
    try await perform("OpenSequence") { try await stub.openSequence(request, options: $0) }
  }

  public func placement(namespace: UInt32, sequence: UInt64) async throws
    -> Heterokv_V1_SequencePlacement
  {
    try await perform("GetPlacement") {
      try await stub.getPlacement(Self.ref(namespace, sequence), options: $0)
    }
  }

  public func releaseSequence(_ request: Heterokv_V1_ReleaseSequenceRequest) async throws
    -> Heterokv_V1_CloseSequenceResponse
  {
    try await perform("ReleaseSequence") { try await stub.releaseSequence(request, options: $0) }
  }

  public func reportReplication(_ request: Heterokv_V1_ReplicationReport) async throws
    -> Heterokv_V1_ReplicationReportResponse
  {
    try await perform("ReportReplication") {
      try await stub.reportReplication(request, options: $0)
    }
  }

  public func reportProfiles(_ request: Heterokv_V1_ReportProfilesRequest) async throws
    -> Heterokv_V1_SequenceBudgets
  {
    try await perform("ReportProfiles") { try await stub.reportProfiles(request, options: $0) }
  }

  /// Budgets of one sequence (`sequence` non-nil) or all, optionally of one layer.
  public func budgets(namespace: UInt32 = 0, sequence: UInt64?, layer: Int?) async throws
    -> Heterokv_V1_GetBudgetsResponse
  {
    let request = Heterokv_V1_GetBudgetsRequest.with {
      if let sequence { $0.ref = Self.ref(namespace, sequence) }
      $0.layer = Int32(clamping: layer ?? -1)
    }
    return try await perform("GetBudgets") { try await stub.getBudgets(request, options: $0) }
  }

  public func closeSequence(namespace: UInt32, sequence: UInt64) async throws
    -> Heterokv_V1_CloseSequenceResponse
  {
    try await perform("CloseSequence") {
      try await stub.closeSequence(Self.ref(namespace, sequence), options: $0)
    }
  }

  public func nodes() async throws -> Heterokv_V1_ListNodesResponse {
    try await perform("ListNodes") { try await stub.listNodes(.init(), options: $0) }
  }

  public func status() async throws -> Heterokv_V1_ClusterStatus {
    try await perform("GetStatus") { try await stub.getStatus(.init(), options: $0) }
  }

  static func ref(_ namespace: UInt32, _ sequence: UInt64) -> Heterokv_V1_SequenceRef {
    .with {
      $0.namespace = namespace
      $0.sequence = sequence
    }
  }
}
