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
            try await self.dropOrphanedRows()
          } catch {
            self.logger.error("cannot record lapsed leases: \(error)")
          }
          try? await Task.sleep(for: period)
        }
      }
    }
  }

  /// Calls `DropSequence` on every node that still holds rows of a sequence the coordinator
  /// closed; a node that answers (or no longer knows the sequence) is recorded as done, one
  /// that cannot be reached is tried again at the next tick (or forgotten once it is down).
  func dropOrphanedRows() async throws {
    let drops = try await coordinator.pendingDrops()
    guard !drops.isEmpty else { return }
    for drop in drops {
      guard let address = HostPort(drop.controlAddress) else { continue }
      do {
        let dropped = try await ControlPlaneClient.with(address: address, security: security) {
          grpc in
          let node = Heterokv_V1_MemoryNodeControl.Client(wrapping: grpc)
          var options = CallOptions.defaults
          options.timeout = .seconds(2)
          do {
            let answer = try await node.dropSequence(
              .with {
                $0.namespace = drop.key.namespace
                $0.sequence = drop.key.sequence
              }, options: options)
            return answer.shardsDropped
          } catch let error as RPCError where error.code == .notFound {
            return 0
          }
        }
        try await coordinator.rowsDropped(drop.key, nodes: [drop.nodeID])
        logger.info(
          "dropped the rows of a sequence whose worker is gone",
          metadata: [
            "sequence": "\(drop.key)", "node": "\(drop.nodeID)", "shards": "\(dropped)",
          ])
      } catch let error as HeteroKVError {
        throw error
      } catch {
        logger.warning(
          "cannot reach a memory node to drop a closed sequence; will retry",
          metadata: ["sequence": "\(drop.key)", "node": "\(drop.nodeID)", "error": "\(error)"])
      }
    }
  }
}
