/// One thing wrong with a cluster file: where (file, key path, line when the parser knows it)
/// and what was expected.
public struct ConfigurationProblem: Sendable, Hashable, CustomStringConvertible {
  /// The file (or "<flags>" / "<environment>").
  public var file: String
  /// Dotted path of the key, e.g. `memory_nodes[1].capacity`.
  public var keyPath: String
  /// 1-based line in the file, when known.
  public var line: Int?
  /// What is wrong and what was expected.
  public var message: String

  public init(file: String, keyPath: String, line: Int?, message: String) {
    self.file = file
    self.keyPath = keyPath
    self.line = line
    self.message = message
  }

  public var description: String {
    let location = line.map { "\(file):\($0)" } ?? file
    return keyPath.isEmpty ? "\(location): \(message)" : "\(location): \(keyPath): \(message)"
  }
}

/// A cluster file that cannot be used, with every problem found (not just the first).
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
  /// Everything wrong, in file order.
  public var problems: [ConfigurationProblem]

  /// The problems, sorted by line (problems without a line keep their order, last).
  public init(problems: [ConfigurationProblem]) {
    self.problems = problems.enumerated().sorted {
      ($0.element.line ?? .max, $0.offset) < ($1.element.line ?? .max, $1.offset)
    }.map(\.element)
  }

  public var description: String {
    let count = problems.count == 1 ? "1 problem" : "\(problems.count) problems"
    return "invalid cluster configuration (\(count)):\n"
      + problems.map { "  - \($0)" }.joined(separator: "\n")
  }
}
