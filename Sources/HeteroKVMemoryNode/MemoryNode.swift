import HeteroKVCore
import CoreMetrics
import HeteroKVDaemon
import HeteroKVTransport
import HeteroKVWire
import Logging
import ServiceLifecycle

/// A memory-node daemon as a lifecycle `Service`: a page pool and shard store, the data plane
/// (TCP, or RDMA where a device exists) and the gRPC control service. It serves until a
/// graceful shutdown, then stops the control service and closes the data plane. Memory is
/// volatile: a restarted node starts empty.
public final class MemoryNode: Service, Sendable {
  /// The configuration it runs with.
  public let configuration: MemoryNodeConfiguration
  /// Its rows.
  public let store: ShardStore
  /// Its counters.
  public let metrics: MemoryNodeMetrics
  private let logger: Logger
  private let addresses = AsyncValue<MemoryNodeAddresses>()
  private let security: ControlPlaneSecurity
  /// Ready once the data plane listens.
  public let health = DaemonHealth(conditions: ["data_plane"])

  /// A node; `metricsFactory` receives its metrics (pass a Prometheus factory in the daemon).
  /// `security` guards the gRPC control service (token, TLS).
  public init(
    configuration: MemoryNodeConfiguration, security: ControlPlaneSecurity = .none,
    metricsFactory: any MetricsFactory, logger: Logger
  ) throws(HeteroKVError) {
    try configuration.validate()
    self.security = security
    self.configuration = configuration
    self.store = ShardStore(
      pool: PagePool(
        capacityBytes: configuration.capacityBytes, pageBytes: configuration.pageBytes),
      limits: configuration.limits)
    self.metrics = MemoryNodeMetrics(nodeID: configuration.id, factory: metricsFactory)
    var logger = logger
    logger[metadataKey: "node"] = "\(configuration.id)"
    self.logger = logger
  }

  /// Where the node listens, once both servers are bound.
  public func listeningAddresses() async throws -> MemoryNodeAddresses {
    try await addresses.value
  }

  public func run() async throws {
    let config = configuration
    let handler = MemoryNodeDataPlane(store: store, metrics: metrics)
    // The data plane takes the same token as the control plane, plus any tenants.
    var serverOptions = config.server
    if !serverOptions.access.required, let token = security.token {
      serverOptions.access = DataPlaneAccess(clusterToken: token)
    }
    var note = ""
    var rdma: RDMADataPlaneServer?
    var tcp: TCPDataPlaneServer?
    do {
      if config.transport == .rdma {
        let probe = RDMAAvailability.probe()
        if probe.isAvailable {
          rdma = try RDMADataPlaneServer.start(
            host: config.data.host, port: config.data.port, handler: handler,
            limits: config.limits, options: serverOptions, logger: logger)
          logger.info("data plane over RDMA (rsockets)", metadata: ["devices": "\(probe.devices)"])
        } else {
          note = "RDMA was requested but \(probe.reason); serving the data plane over TCP"
          logger.warning("\(note)")
        }
      }
      if rdma == nil {
        tcp = try await TCPDataPlaneServer.start(
          host: config.data.host, port: config.data.port, handler: handler, limits: config.limits,
          options: serverOptions, logger: logger)
      }
    } catch {
      addresses.fail(error)
      throw error
    }
    let dataPort = rdma?.port ?? tcp?.localAddress.port ?? config.data.port
    let dataAddress = HostPort(host: config.data.host, port: dataPort)
    let served: DataPlaneTransportKind = rdma == nil ? .tcp : .rdma
    // Clients in this process (an in-process cluster's worker) reach the node without a socket.
    let colocated: ColocatedDataPlaneServer?
    do {
      colocated =
        serverOptions.servesColocated
        ? try ColocatedDataPlaneServer.start(
          address: dataAddress, handler: handler, limits: config.limits, options: serverOptions)
        : nil
    } catch {
      addresses.fail(error)
      await tcp?.close()
      rdma?.close()
      throw error
    }
    let control = MemoryNodeControlService(
      identity: .init(
        nodeID: config.id, transport: served, dataAddress: dataAddress, transportNote: note),
      store: store, metrics: metrics)
    let grpc = GRPCServerService(
      host: config.control.host, port: config.control.port, services: [control],
      serviceNames: [Heterokv_V1_MemoryNodeControl.descriptor.fullyQualifiedService],
      health: health, security: security)
    health.set(
      "data_plane", met: true, detail: "\(served.rawValue) data plane listening on \(dataAddress)")

    // Whatever ends the node (a graceful shutdown, the control server failing to start or to
    // run) stops its data planes, so no co-located address stays registered to a dead node.
    var dataPlanesOpen = true
    func stopDataPlanes() async {
      guard dataPlanesOpen else { return }
      dataPlanesOpen = false
      colocated?.close()
      await tcp?.close()
      rdma?.close()
    }
    do {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await grpc.run() }
        do {
          let controlPort = try await grpc.listeningPort()
          let bound = MemoryNodeAddresses(
            data: dataAddress, control: HostPort(host: config.control.host, port: controlPort),
            transport: served)
          addresses.set(bound)
          logger.info(
            "memory node serving",
            metadata: [
              "data": "\(bound.data) (\(served.rawValue))", "control": "\(bound.control)",
              "capacity_bytes": "\(config.capacityBytes)",
            ])
        } catch {
          addresses.fail(error)
          throw error
        }
        try? await gracefulShutdown()
        logger.info("memory node shutting down")
        health.set("data_plane", met: false, detail: "shutting down")
        await stopDataPlanes()
      }
    } catch {
      await stopDataPlanes()
      throw error
    }
  }
}
