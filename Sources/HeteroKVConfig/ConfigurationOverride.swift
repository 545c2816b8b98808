/// One value set over the cluster file by an environment variable or a flag. Overrides are
/// applied to the parsed document before it is checked, so an overridden value is validated
/// exactly like one written in the file, and a problem with it names where it came from.
public struct ConfigurationOverride: Sendable, Hashable {
  /// Dotted key path, e.g. `coordinator.state_dir` or `budgets.memory_fraction`.
  public var keyPath: String
  /// The value as text, parsed as the key's type.
  public var value: String
  /// Where it came from, e.g. `environment HKV_BUDGETS_MEMORY_FRACTION` or `flag --set`.
  public var source: String

  public init(keyPath: String, value: String, source: String) {
    self.keyPath = keyPath
    self.value = value
    self.source = source
  }

  /// Every key an override may set: the scalar keys outside the list of memory nodes.
  public static let overridableKeys: [String] = [
    "cluster", "replication",
    "coordinator.control", "coordinator.metrics", "coordinator.state_dir", "coordinator.lease",
    "coordinator.heartbeat", "coordinator.snapshot_every",
    "worker.control", "worker.metrics", "worker.key_codec", "worker.key_bits",
    "worker.group_size", "worker.window", "worker.sinks", "worker.tau",
    "worker.cap_selection", "worker.output_mode", "worker.ack_replicas", "worker.finer_codes",
    "worker.query_aware_codes", "worker.unkept_estimate", "worker.selection",
    "budgets.policy", "budgets.memory_fraction", "budgets.min_tokens", "budgets.max_tokens",
    "budgets.full_head_cost", "budgets.stability_threshold", "budgets.similarity_threshold",
    "budgets.profile_interval_steps", "budgets.recall",
    "security.token_env", "security.token_file", "security.tls.cert", "security.tls.key",
    "security.tls.ca", "security.tls.require_client_cert", "security.tls.server_name",
  ]

  /// The environment variable that overrides `keyPath`: `HKV_` and the path in capitals with
  /// dots as underscores (`budgets.memory_fraction` → `HKV_BUDGETS_MEMORY_FRACTION`).
  public static func environmentName(for keyPath: String) -> String {
    "HKV_" + keyPath.uppercased().replacingOccurrences(of: ".", with: "_")
  }

  /// The overrides present in `environment`.
  public static func fromEnvironment(_ environment: [String: String]) -> [ConfigurationOverride] {
    overridableKeys.compactMap { key in
      let name = environmentName(for: key)
      return environment[name].map {
        ConfigurationOverride(keyPath: key, value: $0, source: "environment \(name)")
      }
    }
  }

  /// Parses `--set key.path=value` arguments; an unknown key or a missing `=` is a problem.
  public static func fromAssignments(_ assignments: [String]) throws(ConfigurationError)
    -> [ConfigurationOverride]
  {
    var result: [ConfigurationOverride] = []
    var problems: [ConfigurationProblem] = []
    for assignment in assignments {
      guard let equals = assignment.firstIndex(of: "=") else {
        problems.append(
          ConfigurationProblem(
            file: "<flags>", keyPath: assignment, line: nil,
            message: "--set expects key.path=value"))
        continue
      }
      let key = String(assignment[..<equals])
      guard overridableKeys.contains(key) else {
        let near = overridableKeys.min { editDistance($0, key) < editDistance($1, key) }
        let hint = near.flatMap { editDistance($0, key) <= 3 ? " (did you mean \"\($0)\"?)" : nil }
        problems.append(
          ConfigurationProblem(
            file: "<flags>", keyPath: key, line: nil,
            message: "not a key --set can override\(hint ?? ""); see docs/configuration.md"))
        continue
      }
      result.append(
        ConfigurationOverride(
          keyPath: key, value: String(assignment[assignment.index(after: equals)...]),
          source: "flag --set"))
    }
    guard problems.isEmpty else { throw ConfigurationError(problems: problems) }
    return result
  }
}
