import CoreMetrics
import HeteroKVConfig
import HeteroKVCoordinator
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVMemoryNode
import HeteroKVWire
import HeteroKVWorker
import Logging
import ServiceLifecycle

/// A whole cluster in one process on loopback: a coordinator (state in memory), memory nodes
/// that register with it, and a worker (with its gRPC engine API when asked). Every role is
/// the real one, talking over real sockets; each runs in its own service group, so one memory
/// node can be stopped while the rest go on. `hkv demo` and the end-to-end tests run on it.
public final class LocalCluster: Sendable {
  /// What to start.
  public struct Options: Sendable {
    public var model: ModelGeometry
    public var memoryNodes: Int = 2
    /// Page-pool capacity of each memory node.
    public var capacityBytes: Int = 4 << 30
    public var replication: Int = 1
    public var budgets: BudgetSettings = BudgetSettings()
    public var worker: WorkerSettings = WorkerSettings()
    public var outputMode: HCAttentionOutputMode = WorkerSettings().outputMode
    public var chunkTokens: Int = 128 << 10
    /// Also serve the engine API over gRPC.
    public var serveEngine: Bool = false
    public var leaseSeconds: Double = 5
    /// How often the worker checks its sequences' copies.
    public var replicaCheckInterval: Duration = .seconds(1)
    /// Whether the worker reaches the nodes without sockets (`ColocatedDataPlaneServer`), as
    /// a worker reaches values offloaded to its own host's memory; off, over loopback TCP, as
    /// it reaches nodes on other hosts. The nodes listen on TCP either way.
    public var colocatedDataPlane = false

    public init(model: ModelGeometry) { self.model = model }

    /// Options whose every memory node can hold all of a `tokens`-token sequence (fp16 keys
    /// and values of every layer and KV head), at least 256 MiB.
    public init(model: ModelGeometry, sequenceTokens tokens: Int) {
      self.model = model
      capacityBytes = max(256 << 20, tokens * model.layers * model.kvHeads * model.headDim * 4)
    }
  }

  /// A memory node of the cluster.
  public struct Node: Sendable {
    public var id: String
    public var node: MemoryNode
    public var data: HostPort
  }

  /// The cluster as a cluster file would describe it.
  public let configuration: ClusterConfiguration
  /// The coordinator's gRPC address.
  public let coordinatorAddress: HostPort
  /// The coordinator itself.
  public let coordinator: Coordinator
  /// The memory nodes.
  public let nodes: [Node]
  /// The worker.
  public let worker: Worker
  /// The engine API's address when served.
  public let engineAddress: HostPort?
  private let groups: [String: ServiceGroup]
  private let tasks: [Task<Void, Never>]

  private init(
    configuration: ClusterConfiguration, coordinatorAddress: HostPort, coordinator: Coordinator,
    nodes: [Node], worker: Worker, engineAddress: HostPort?, groups: [String: ServiceGroup],
    tasks: [Task<Void, Never>]
  ) {
    self.configuration = configuration
    self.coordinatorAddress = coordinatorAddress
    self.coordinator = coordinator
    self.nodes = nodes
    self.worker = worker
    self.engineAddress = engineAddress
    self.groups = groups
    self.tasks = tasks
  }

  /// Starts every role and returns once the memory nodes are registered and up.
  public static func start(
    _ options: Options, logger: Logger,
    metricsFactory: any MetricsFactory = NOOPMetricsHandler.instance
  ) async throws -> LocalCluster {
    let loopback = "127.0.0.1"
    var configuration = ClusterConfiguration(
      name: "local", model: options.model,
      coordinator: CoordinatorSettings(
        control: HostPort(host: loopback, port: 0), stateDirectory: "(memory)",
        leaseSeconds: options.leaseSeconds, heartbeatSeconds: options.leaseSeconds / 4),
      memoryNodes: [], worker: options.worker,
      budgets: options.budgets.recallingOnly(with: options.outputMode),
      replication: options.replication)
    var groups: [String: ServiceGroup] = [:]
    var tasks: [Task<Void, Never>] = []
    func launch(_ name: String, _ services: [any Service]) {
      let group = ServiceGroup(
        configuration: .init(services: services.map { .init(service: $0) }, logger: logger))
      groups[name] = group
      tasks.append(
        Task.detached {
          do { try await group.run() } catch { logger.error("\(name) stopped: \(error)") }
        })
    }
    let coordinatorDaemon = try CoordinatorDaemon(
      configuration: configuration, store: InMemoryCoordinatorStore(), security: .none,
      metricsFactory: metricsFactory, logger: logger)
    launch("coordinator", [coordinatorDaemon])
    let coordinatorAddress = HostPort(
      host: loopback, port: try await coordinatorDaemon.listeningPort())
    configuration.coordinator?.control = coordinatorAddress
    var nodes: [Node] = []
    for i in 0..<options.memoryNodes {
      let id = "mem-\(i)"
      // Each node serves on an event loop of its own, as a node process would: on the shared
      // loops a decode step's requests waited behind the worker's own I/O.
      var nodeConfiguration = MemoryNodeConfiguration(
        id: id, data: HostPort(host: loopback, port: 0),
        control: HostPort(host: loopback, port: 0), capacityBytes: options.capacityBytes)
      nodeConfiguration.server.eventLoopThreads = 1
      nodeConfiguration.server.servesColocated = options.colocatedDataPlane
      let node = try MemoryNode(
        configuration: nodeConfiguration,
        metricsFactory: metricsFactory, logger: logger)
      let capacity = options.capacityBytes
      let agent = MembershipAgent(
        coordinator: coordinatorAddress, security: .none, logger: logger,
        retry: .milliseconds(200)
      ) {
        let bound = try await node.listeningAddresses()
        let store = node.store
        return .memoryNode(
          id: id, data: bound.data, control: bound.control, transport: bound.transport,
          capacityBytes: capacity, usedBytes: { store.stats().usedBytes })
      }
      launch(id, [node, agent])
      let bound = try await node.listeningAddresses()
      nodes.append(Node(id: id, node: node, data: bound.data))
      configuration.memoryNodes.append(
        MemoryNodeSettings(
          id: id, data: bound.data, control: bound.control, capacityBytes: capacity))
    }
    let worker = try Worker(
      options: {
        var o = try WorkerOptions(cluster: configuration, id: "worker-0")
        o.outputMode = options.outputMode
        o.chunkTokens = options.chunkTokens
        o.replicaCheckInterval = options.replicaCheckInterval
        return o
      }(),
      control: CoordinatorControl(address: coordinatorAddress),
      metrics: WorkerMetrics(workerID: "worker-0", factory: metricsFactory))
    var engineAddress: HostPort?
    if options.serveEngine {
      let daemon = WorkerDaemon(worker: worker, host: loopback, port: 0, security: .none)
      launch("worker", [daemon])
      engineAddress = HostPort(host: loopback, port: try await daemon.listeningPort())
    }
    let cluster = LocalCluster(
      configuration: configuration, coordinatorAddress: coordinatorAddress,
      coordinator: coordinatorDaemon.coordinator, nodes: nodes, worker: worker,
      engineAddress: engineAddress, groups: groups, tasks: tasks)
    // Wait for every memory node's registration.
    let deadline = ContinuousClock.now + .seconds(20)
    while try await coordinatorDaemon.coordinator.members().filter({
      $0.member.role == .memoryNode && $0.member.status == .up
    }).count < options.memoryNodes {
      guard ContinuousClock.now < deadline else {
        await cluster.shutdown()
        throw HeteroKVError(.unavailable, "memory nodes did not register within 20 s")
      }
      try await Task.sleep(for: .milliseconds(20))
    }
    return cluster
  }

  /// Stops memory node `id` (its data plane closes; its rows are gone).
  public func stopMemoryNode(_ id: String) async {
    await groups[id]?.triggerGracefulShutdown()
  }

  /// Stops every role.
  public func shutdown() async {
    for group in groups.values { await group.triggerGracefulShutdown() }
    for task in tasks { await task.value }
    await worker.shutdown()
  }
}
