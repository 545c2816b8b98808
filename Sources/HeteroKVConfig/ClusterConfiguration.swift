import Foundation
import HeteroKVCore
import HeteroKVWire
import Yams

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

  /// Reads and checks the file at `path`, with `overrides` applied over it.
  public static func load(path: String, overrides: [ConfigurationOverride] = [])
    throws(ConfigurationError) -> ClusterConfiguration
  {
    let text: String
    do {
      text = try String(contentsOfFile: path, encoding: .utf8)
    } catch {
      throw ConfigurationError(problems: [
        ConfigurationProblem(
          file: path, keyPath: "", line: nil,
          message: "cannot read the file: \(error.localizedDescription)")
      ])
    }
    return try parse(yaml: text, file: path, overrides: overrides)
  }

  /// Parses and checks YAML text; `file` names it in problems.
  public static func parse(
    yaml: String, file: String = "<yaml>", overrides: [ConfigurationOverride] = []
  ) throws(ConfigurationError) -> ClusterConfiguration {
    var root: Node
    do {
      guard let node = try Yams.compose(yaml: yaml) else {
        throw ConfigurationError(problems: [
          ConfigurationProblem(file: file, keyPath: "", line: nil, message: "the file is empty")
        ])
      }
      root = node
    } catch let error as ConfigurationError {
      throw error
    } catch let error as YamlError {
      throw ConfigurationError(problems: [syntaxProblem(error, file: file)])
    } catch {
      throw ConfigurationError(problems: [
        ConfigurationProblem(
          file: file, keyPath: "", line: nil, message: "not valid YAML: \(error)")
      ])
    }
    var sources: [String: String] = [:]
    for override in overrides {
      root = root.setting(
        override.keyPath.split(separator: ".").map(String.init), to: override.value)
      sources[override.keyPath] = override.source
    }
    let log = ProblemLog(file: file, overrideSources: sources)
    let reader = YAMLReader(node: root, path: "", log: log)
    guard reader.expectMapping() else { throw ConfigurationError(problems: log.problems) }
    reader.rejectUnknownKeys([
      "cluster", "model", "coordinator", "memory_nodes", "worker", "budgets", "replication",
      "security",
    ])
    let name = reader.string("cluster", required: true) ?? ""
    let model = readModel(reader)
    let coordinator = reader.section("coordinator").flatMap(readCoordinator)
    if reader.has("coordinator") && !reader.has("model") {
      reader.problem(
        "model", "a cluster with a coordinator needs the model (a preset name or its geometry)")
    }
    let entries = reader.list("memory_nodes", required: true)
    let nodes = entries.compactMap(readMemoryNode)
    if entries.isEmpty && reader.child("memory_nodes")?.sequence != nil {
      reader.problem("memory_nodes", "the cluster needs at least one memory node")
    }
    checkUnique(nodes, coordinator: coordinator, reader: reader)
    let worker = reader.section("worker").map { readWorker($0, model: model) } ?? WorkerSettings()
    let budgets = reader.section("budgets").map(readBudgets) ?? BudgetSettings()
    let replication = reader.int("replication", range: 1...8) ?? 1
    if entries.count > 0, replication > entries.count {
      reader.problem(
        "replication",
        "\(replication) copies need at least \(replication) memory nodes; the file has \(entries.count)"
      )
    }
    let security = reader.section("security").map(readSecurity) ?? SecuritySettings()
    guard log.problems.isEmpty, let worker, let budgets, let security else {
      throw ConfigurationError(problems: log.problems)
    }
    return ClusterConfiguration(
      name: name, model: model, coordinator: coordinator, memoryNodes: nodes, worker: worker,
      budgets: budgets, replication: replication, security: security)
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

  private static func readMemoryNode(_ r: YAMLReader) -> MemoryNodeSettings? {
    guard r.expectMapping() else { return nil }
    r.rejectUnknownKeys(["id", "data", "control", "metrics", "capacity", "page_size", "transport"])
    let id = r.string("id", required: true)
    let data = r.hostPort("data", required: true)
    let control = r.hostPort("control", required: true)
    let metrics = r.hostPort("metrics")
    let capacity = r.bytes("capacity", required: true)
    let page = r.bytes("page_size") ?? (r.has("page_size") ? nil : 64 << 10)
    let transport: DataPlaneTransportKind? = r.has("transport") ? r.choice("transport") : .tcp
    if let page, page < 4096 || page % 64 != 0 {
      r.problem("page_size", "must be a multiple of 64 bytes and at least 4KiB, got \(page)")
    }
    if let capacity, let page, capacity < page {
      r.problem("capacity", "\(capacity) bytes is less than one page (\(page) bytes)")
    }
    guard let id, let data, let control, let capacity, let page, let transport else { return nil }
    return MemoryNodeSettings(
      id: id, data: data, control: control, metrics: metrics, capacityBytes: capacity,
      pageBytes: page, transport: transport)
  }

  private static func checkUnique(
    _ nodes: [MemoryNodeSettings], coordinator: CoordinatorSettings?, reader: YAMLReader
  ) {
    var ids: [String: Int] = [:]
    var addresses: [HostPort: String] = [:]
    if let coordinator {
      for (what, address) in [("control", coordinator.control)]
        + (coordinator.metrics.map { [("metrics", $0)] } ?? []) where address.port != 0
      {
        addresses[address] = "coordinator.\(what)"
      }
    }
    for (i, node) in nodes.enumerated() {
      if let first = ids[node.id] {
        reader.problem("memory_nodes", "id \"\(node.id)\" is used by entries \(first) and \(i)")
      }
      ids[node.id] = ids[node.id] ?? i
      for (what, address) in [("data", node.data), ("control", node.control)]
        + (node.metrics.map { [("metrics", $0)] } ?? [])
      where address.port != 0 {
        if let owner = addresses[address] {
          reader.problem(
            "memory_nodes", "\(address) is used twice (\(owner) and \(node.id).\(what))")
        }
        addresses[address] = "\(node.id).\(what)"
      }
    }
  }

  private static func syntaxProblem(_ error: YamlError, file: String) -> ConfigurationProblem {
    switch error {
    case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _):
      return ConfigurationProblem(
        file: file, keyPath: "", line: mark.line, message: "YAML syntax: \(problem)")
    default:
      return ConfigurationProblem(file: file, keyPath: "", line: nil, message: "YAML: \(error)")
    }
  }
}
