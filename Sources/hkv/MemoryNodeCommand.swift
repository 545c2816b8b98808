import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVCoordinatorClient
import HeteroKVDaemon
import HeteroKVMemoryNode
import HeteroKVWire
import Logging
import Prometheus
import ServiceLifecycle

/// `hkv memnode`: runs one memory-node daemon until SIGTERM or SIGINT.
struct MemoryNodeCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "memnode",
    abstract: "Run a memory node: offloaded values and full-context K/V served to workers.",
    discussion: """
      Settings come from the cluster file's entry for --id (--config), and flags override
      them; without --config every listen address and the capacity must be given as flags.
      Once both servers listen, one line goes to stdout:
        ready node=ID data=HOST:PORT control=HOST:PORT transport=tcp|rdma metrics=HOST:PORT|none
      Logs go to stderr. Memory is volatile: a restarted node starts empty.
      """)

  @OptionGroup var file: ClusterFileOptions

  @Option(
    help:
      "Coordinator address host:port to register with (default: the cluster file's; 'none' runs alone)."
  )
  var coordinator: String?

  @Option(help: "The node's id (its entry in the cluster file).")
  var id: String

  @Option(help: "Data-plane listen address host:port (port 0 picks one).")
  var data: String?

  @Option(help: "gRPC control listen address host:port.")
  var control: String?

  @Option(help: "Prometheus /metrics listen address host:port; 'none' disables it.")
  var metrics: String?

  @Option(help: "Page-pool capacity, e.g. 8GiB.")
  var capacity: String?

  @Option(help: "Page size, e.g. 64KiB.")
  var pageSize: String?

  @Option(help: "Data-plane transport: tcp or rdma (rdma falls back to tcp without a device).")
  var transport: String?

  @Option(
    help:
      "Threads that serve PartialAttention and Gather off the TCP event loops (default: one per core; 0: on the loops)."
  )
  var computeThreads: Int?

  @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
  var logLevel: String = "info"

  func run() async throws {
    let cluster = try file.load()
    let settings = try resolveSettings(cluster)
    let security = try cluster?.controlPlaneSecurity() ?? .none
    var coordinatorAddresses = cluster?.coordinator?.controlAddresses
    if let coordinator {
      guard coordinator == "none" || HostPort(coordinator) != nil else {
        throw ValidationError("bad --coordinator '\(coordinator)': expected host:port or none")
      }
      coordinatorAddresses = HostPort(coordinator).map { [$0] }
    }
    _ = try bootstrapLogging(logLevel)
    let logger = Logger(label: "hkv.memnode")
    let registry = PrometheusCollectorRegistry()
    let node: MemoryNode
    do {
      var configuration = MemoryNodeConfiguration(
        id: settings.id, data: settings.data, control: settings.control,
        capacityBytes: settings.capacityBytes, pageBytes: settings.pageBytes,
        transport: settings.transport)
      if let cluster { configuration.server.access = try cluster.dataPlaneAccess() }
      if let computeThreads {
        guard (0...1024).contains(computeThreads) else {
          throw ValidationError("bad --compute-threads \(computeThreads): expected 0...1024")
        }
        configuration.server.computeThreads = computeThreads
      }
      node = try MemoryNode(
        configuration: configuration,
        security: security, metricsFactory: PrometheusMetricsFactory(registry: registry),
        logger: logger)
    } catch let error as HeteroKVError {
      throw CommandFailure(description: error.message)
    }
    var services: [any Service] = [node]
    if let coordinatorAddresses {
      services.append(
        MembershipAgent(coordinators: coordinatorAddresses, security: security, logger: logger) {
          let bound = try await node.listeningAddresses()
          let store = node.store
          return .memoryNode(
            id: settings.id, data: bound.data, control: bound.control, transport: bound.transport,
            capacityBytes: settings.capacityBytes, usedBytes: { store.stats().usedBytes })
        })
    }
    try await runDaemon(
      role: "memnode", services, metrics: settings.metrics, registry: registry,
      health: node.health, logger: logger
    ) {
      let addresses = try await node.listeningAddresses()
      return
        "node=\(settings.id) data=\(addresses.data) control=\(addresses.control) transport=\(addresses.transport.rawValue)"
    }
  }

  /// The cluster file's entry with flags applied over it.
  func resolveSettings(_ cluster: ClusterConfiguration?) throws -> MemoryNodeSettings {
    var base: MemoryNodeSettings?
    if let cluster {
      do {
        base = try cluster.memoryNode(id: id)
      } catch {
        throw CommandFailure(description: error.description)
      }
    }
    func address(_ flag: String, _ value: String?, _ fallback: HostPort?) throws -> HostPort {
      if let value {
        guard let parsed = HostPort(value) else {
          throw ValidationError("bad --\(flag) '\(value)': expected host:port")
        }
        return parsed
      }
      guard let fallback else {
        throw ValidationError("--\(flag) is required without --config")
      }
      return fallback
    }
    let data = try address("data", data, base?.data)
    let control = try address("control", control, base?.control)
    let metricsAddress: HostPort? =
      metrics == "none" ? nil : try metrics.map { try address("metrics", $0, nil) } ?? base?.metrics
    func size(_ flag: String, _ value: String?, _ fallback: Int?) throws -> Int {
      if let value {
        guard let bytes = ByteSize.parse(value) else {
          throw ValidationError("bad --\(flag) '\(value)': expected a size such as 8GiB")
        }
        return bytes
      }
      guard let fallback else { throw ValidationError("--\(flag) is required without --config") }
      return fallback
    }
    let capacityBytes = try size("capacity", capacity, base?.capacityBytes)
    let pageBytes = try size("page-size", pageSize, base?.pageBytes ?? 64 << 10)
    var kind = base?.transport ?? .tcp
    if let transport {
      guard let parsed = DataPlaneTransportKind(rawValue: transport) else {
        throw ValidationError("bad --transport '\(transport)': expected tcp or rdma")
      }
      kind = parsed
    }
    return MemoryNodeSettings(
      id: id, data: data, control: control, metrics: metricsAddress, capacityBytes: capacityBytes,
      pageBytes: pageBytes, transport: kind)
  }
}
