import HeteroKVCore
import CoreMetrics
import HeteroKVSettings
import GRPCCore
import HeteroKVControlPlane
import HeteroKVDaemon
import HeteroKVWire
import Logging
import ServiceLifecycle

/// The coordinator daemon as a lifecycle `Service`: the gRPC service and a ticker that marks
/// members down as soon as their lease lapses (four checks per lease period) and tells memory
/// nodes to drop the rows of sequences whose worker is gone. Stops on a graceful shutdown; its
/// state is already durable, so stopping loses nothing.
public final class CoordinatorDaemon: Service, Sendable {
  /// The coordinator it serves.
  public let coordinator: Coordinator
  private let server: GRPCServerService
  private let leaseSeconds: Double
  private let logger: Logger
  private let security: ControlPlaneSecurity
  /// Ready once the store is open (the coordinator has read its state from it).
  public let health = DaemonHealth(conditions: ["store"])

  /// A daemon for `configuration` (which must have a coordinator section) over `store`.
  public init(
    configuration: ClusterConfiguration, store: any CoordinatorStore,
    security: ControlPlaneSecurity,
    metricsFactory: any MetricsFactory, logger: Logger,
    now: @escaping @Sendable () -> Double = Coordinator.monotonicSeconds
  ) throws(HeteroKVError) {
    guard let settings = configuration.coordinator else {
      throw .failedPrecondition("the cluster file has no coordinator section")
    }
    coordinator = try Coordinator(
      configuration: configuration, store: store, metricsFactory: metricsFactory, logger: logger,
      now: now)
    server = GRPCServerService(
      host: settings.control.host, port: settings.control.port,
      services: [CoordinatorService(coordinator: coordinator)],
      serviceNames: [Heterokv_V1_Coordinator.descriptor.fullyQualifiedService], health: health,
      security: security)
    health.set("store", met: true, detail: "state loaded from its store")
    leaseSeconds = settings.leaseSeconds
    self.logger = logger
    self.security = security
  }

  /// The gRPC port, once listening.
  public func listeningPort() async throws -> Int { try await server.listeningPort() }

  public func run() async throws {
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await self.server.run() }
      group.addTask {
        let period = Duration.milliseconds(Int64(max(10, self.leaseSeconds * 250)))
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
          do {
            try await self.coordinator.expireLeases()
          } catch {
            self.logger.error("cannot record lapsed leases: \(error)")
          }
          try? await Task.sleep(for: period)
        }
      }
      // Drops run on their own: a node that cannot be reached never delays lease expiry.
      group.addTask {
        let period = Duration.milliseconds(Int64(max(10, self.leaseSeconds * 250)))
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
          do {
            try await self.dropOrphanedRows()
          } catch {
            self.logger.error("cannot record dropped rows: \(error)")
          }
          try? await Task.sleep(for: period)
        }
      }
    }
  }

  func dropOrphanedRows() async throws {
    try await RowReclaimer(coordinator: coordinator, security: security, logger: logger).run()
  }
}
