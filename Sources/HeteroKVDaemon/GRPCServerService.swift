import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import ServiceLifecycle

/// A gRPC server (HTTP/2 over NIO, plaintext or TLS, with the cluster token checked when one
/// is set) run as a lifecycle `Service`: it serves until a graceful shutdown begins, then stops
/// accepting RPCs and lets running ones finish. Every server also carries the standard gRPC
/// health service (``HealthService``) over the daemon's ``DaemonHealth``.
public struct GRPCServerService: Service {
  /// The server; its transport reports the listening address once bound.
  public let server: GRPCServer<HTTP2ServerTransport.Posix>
  private let health: DaemonHealth

  /// A server on `host:port` (0 picks a free port) serving `services` (whose full names
  /// `serviceNames` gives, for the health service) and health from `health` (ready at once
  /// when none is given). `maxPayloadBytes` raises gRPC's 4 MiB default message limit where
  /// an RPC may carry more.
  public init(
    host: String, port: Int, services: [any RegistrableRPCService], serviceNames: [String] = [],
    health: DaemonHealth = DaemonHealth(conditions: []),
    security: ControlPlaneSecurity = .none, maxPayloadBytes: Int = 16 << 20
  ) {
    self.health = health
    health.set("grpc", met: false, detail: "not listening yet")
    let transport = HTTP2ServerTransport.Posix(
      address: host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port),
      transportSecurity: security.serverTransportSecurity,
      config: .defaults { $0.rpc.maxRequestPayloadSize = maxPayloadBytes })
    server = GRPCServer(
      transport: transport,
      services: services + [HealthService(health: health, services: serviceNames)],
      interceptors: security.serverInterceptors)
  }

  /// The bound address, once the server listens.
  public func listeningPort() async throws -> Int {
    let address = try await server.listeningAddress
    guard let port = address?.ipv4?.port ?? address?.ipv6?.port else {
      throw RuntimeError(code: .serverIsStopped, message: "gRPC server has no IP listening address")
    }
    return port
  }

  public func run() async throws {
    let server = self.server
    let health = self.health
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await server.serve() }
        group.addTask {
          if let address = try? await server.listeningAddress {
            health.set("grpc", met: true, detail: "gRPC listening on \(address)")
          }
        }
      }
    } onGracefulShutdown: {
      // Not ready from here on; health watchers end so that running RPCs can finish.
      health.beginShutdown()
      server.beginGracefulShutdown()
    }
  }
}
