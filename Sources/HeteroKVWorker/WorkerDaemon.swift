import HeteroKVEngineClient
import HeteroKVDaemon
import HeteroKVWire
import Logging
import ServiceLifecycle

/// The worker daemon as a lifecycle `Service`: the engine API's gRPC server over a `Worker`.
/// On a graceful shutdown it stops taking calls, lets running ones finish, and closes its
/// memory-node connections.
public final class WorkerDaemon: Service, Sendable {
  /// The worker it serves.
  public let worker: Worker
  private let server: GRPCServerService
  /// Ready while the worker is registered with the coordinator (its membership agent says).
  public let health = DaemonHealth(conditions: ["coordinator"])

  /// A daemon serving `worker` on `host:port` (0 picks a port).
  public init(worker: Worker, host: String, port: Int, security: ControlPlaneSecurity) {
    self.worker = worker
    server = GRPCServerService(
      host: host, port: port, services: [EngineService(worker: worker)],
      serviceNames: [Heterokv_V1_Engine.descriptor.fullyQualifiedService], health: health,
      security: security, maxPayloadBytes: EngineService.maxMessageBytes)
  }

  /// The gRPC port, once listening.
  public func listeningPort() async throws -> Int { try await server.listeningPort() }

  public func run() async throws {
    try await server.run()
    await worker.shutdown()
  }
}
