import Foundation
import HeteroKVCore
import HeteroKVWire

/// One memory node as the cluster file describes it.
public struct MemoryNodeSettings: Sendable, Hashable {
  /// The node's id, unique in the cluster.
  public var id: String
  /// Data-plane listen address (the framed protocol).
  public var data: HostPort
  /// gRPC control listen address.
  public var control: HostPort
  /// Prometheus `/metrics` listen address; none when absent.
  public var metrics: HostPort?
  /// Page-pool capacity in bytes.
  public var capacityBytes: Int
  /// Page size in bytes.
  public var pageBytes: Int
  /// Data-plane transport.
  public var transport: DataPlaneTransportKind

  public init(
    id: String, data: HostPort, control: HostPort, metrics: HostPort? = nil, capacityBytes: Int,
    pageBytes: Int = 64 << 10, transport: DataPlaneTransportKind = .tcp
  ) {
    self.id = id
    self.data = data
    self.control = control
    self.metrics = metrics
    self.capacityBytes = capacityBytes
    self.pageBytes = pageBytes
    self.transport = transport
  }
}

/// A HeteroKV cluster file (YAML): the cluster's name, the model geometry, the coordinator,
/// the memory nodes, the worker's settings, the budget policy, the replication factor and the
/// security settings. Every key is documented in docs/configuration.md. Environment variables
/// and flags override the file (see `ConfigurationOverride`); loading reports every problem at
/// once, each with its key path and line (or the variable or flag it came from).
public struct ClusterConfiguration: Sendable, Hashable {
  /// The cluster's name.
  public var name: String
  /// The model's attention geometry; budgets and reservations are sized from it.
  public var model: ModelGeometry?
  /// The coordinator; none for memory nodes run on their own.
  public var coordinator: CoordinatorSettings?
  /// The memory nodes.
  public var memoryNodes: [MemoryNodeSettings]
  /// The worker's settings.
  public var worker: WorkerSettings
  /// The budget policy.
  public var budgets: BudgetSettings
  /// Distinct memory nodes holding each shard.
  public var replication: Int
  /// Token and TLS settings.
  public var security: SecuritySettings

  public init(
    name: String, model: ModelGeometry? = nil, coordinator: CoordinatorSettings? = nil,
    memoryNodes: [MemoryNodeSettings], worker: WorkerSettings = WorkerSettings(),
    budgets: BudgetSettings = BudgetSettings(), replication: Int = 1,
    security: SecuritySettings = SecuritySettings()
  ) {
    self.name = name
    self.model = model
    self.coordinator = coordinator
    self.memoryNodes = memoryNodes
    self.worker = worker
    self.budgets = budgets
    self.replication = replication
    self.security = security
  }

  /// The node `id`, or an error listing the ids the file has.
  public func memoryNode(id: String) throws(ConfigurationError) -> MemoryNodeSettings {
    guard let node = memoryNodes.first(where: { $0.id == id }) else {
      throw ConfigurationError(problems: [
        ConfigurationProblem(
          file: "<flags>", keyPath: "--id", line: nil,
          message:
            "no memory node \"\(id)\" in cluster \(name); it has \(memoryNodes.map(\.id).joined(separator: ", "))"
        )
      ])
    }
    return node
  }
}
