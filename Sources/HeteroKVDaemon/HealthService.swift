import GRPCCore
import HeteroKVWire

/// The standard gRPC health service (`grpc.health.v1.Health`) over a daemon's
/// ``DaemonHealth``: SERVING while every readiness condition holds, NOT_SERVING otherwise.
/// The empty service name stands for the whole daemon; the names of the services the server
/// carries answer the same; any other name is NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch).
/// It needs no token, as probes carry none (the token check lets it through).
public struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
  /// The service's full name, exempt from the token check.
  public static let serviceName = Grpc_Health_V1_Health.descriptor.fullyQualifiedService

  private let health: DaemonHealth
  private let services: Set<String>
  private let pollInterval: Duration

  /// A health service for `health`, answering for `services` (full names) and "".
  public init(health: DaemonHealth, services: [String], pollInterval: Duration = .milliseconds(200))
  {
    self.health = health
    self.services = Set(services + ["", Self.serviceName])
    self.pollInterval = pollInterval
  }

  private var status: Grpc_Health_V1_HealthCheckResponse.ServingStatus {
    health.isReady ? .serving : .notServing
  }

  public func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext)
    async throws -> Grpc_Health_V1_HealthCheckResponse
  {
    guard services.contains(request.service) else {
      throw RPCError(code: .notFound, message: "no service '\(request.service)' on this server")
    }
    return .with { $0.status = status }
  }

  public func watch(
    request: Grpc_Health_V1_HealthCheckRequest,
    response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>, context: ServerContext
  ) async throws {
    // An unknown service stays SERVICE_UNKNOWN (the call stays open, as the protocol asks).
    let known = services.contains(request.service)
    var seen = health.generation
    var last: Grpc_Health_V1_HealthCheckResponse.ServingStatus = known ? status : .serviceUnknown
    try await response.write(.with { $0.status = last })
    // Ends when the caller cancels or the daemon begins to stop (NOT_SERVING is sent first),
    // so a watcher never holds up a graceful shutdown.
    while !Task.isCancelled && !health.isShuttingDown {
      try await Task.sleep(for: pollInterval)
      let generation = health.generation
      guard known, generation != seen else { continue }
      seen = generation
      let now = status
      if now != last {
        last = now
        try await response.write(.with { $0.status = now })
      }
    }
    if known && last != .notServing {
      try await response.write(.with { $0.status = .notServing })
    }
  }
}
