import Foundation
import HeteroKVCore
import HeteroKVWire
import Yams

// Reading a cluster file (YAML, then overrides) into the typed settings.
extension ClusterConfiguration {

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
    let budgetSection = reader.section("budgets")
    var budgets = budgetSection.map(readBudgets) ?? BudgetSettings()
    // Recall needs exact output: a file that asks for renormalized weights and says nothing of
    // recall gets static caches, not a refusal.
    if budgetSection?.has("recall") != true, let mode = worker?.outputMode {
      budgets = budgets?.recallingOnly(with: mode)
    }
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
      let controls =
        coordinator.replicas.isEmpty
        ? [("control", coordinator.control)]
        : coordinator.replicas.map { ("replicas.\($0.id).control", $0.control) }
      for (what, address) in controls + (coordinator.metrics.map { [("metrics", $0)] } ?? [])
      where address.port != 0 {
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
