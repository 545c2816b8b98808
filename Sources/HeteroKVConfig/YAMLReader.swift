import Foundation
import HeteroKVWire
import Yams

/// Collects problems while a YAML document is read.
final class ProblemLog {
  let file: String
  /// Where each overridden key's value came from (an environment variable, a flag).
  let overrideSources: [String: String]
  var problems: [ConfigurationProblem] = []

  init(file: String, overrideSources: [String: String] = [:]) {
    self.file = file
    self.overrideSources = overrideSources
  }

  func add(_ keyPath: String, _ node: Node?, _ message: String) {
    if let source = overrideSources[keyPath] {
      problems.append(
        ConfigurationProblem(file: source, keyPath: keyPath, line: nil, message: message))
      return
    }
    problems.append(
      ConfigurationProblem(
        file: file, keyPath: keyPath, line: node?.mark.map { $0.line }, message: message))
  }
}

/// Reads typed values out of a YAML mapping, recording a problem (with its line) for each
/// missing, mistyped or unknown key instead of stopping at the first.
struct YAMLReader {
  let node: Node
  let path: String
  let log: ProblemLog

  init(node: Node, path: String, log: ProblemLog) {
    self.node = node
    self.path = path
    self.log = log
  }

  private func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

  /// Whether the node is a mapping; records a problem if not.
  func expectMapping() -> Bool {
    guard node.mapping != nil else {
      log.add(path, node, "expected a mapping of keys to values")
      return false
    }
    return true
  }

  /// Records every key not in `known`.
  func rejectUnknownKeys(_ known: Set<String>) {
    guard let mapping = node.mapping else { return }
    for (key, _) in mapping {
      guard let name = key.string else {
        log.add(path, key, "keys must be strings")
        continue
      }
      if !known.contains(name) {
        let suggestion = known.min { editDistance($0, name) < editDistance($1, name) }
        let hint =
          suggestion.flatMap { editDistance($0, name) <= 3 ? " (did you mean \"\($0)\"?)" : nil }
          ?? ""
        log.add(
          keyPath(name), key,
          "unknown key\(hint); known keys: \(known.sorted().joined(separator: ", "))")
      }
    }
  }

  func child(_ key: String) -> Node? { node.mapping?[key] }

  func has(_ key: String) -> Bool { child(key) != nil }

  func scalar(_ key: String, required: Bool) -> (String, Node)? {
    guard let value = child(key) else {
      if required { log.add(keyPath(key), node, "missing (required)") }
      return nil
    }
    guard let scalar = value.scalar else {
      log.add(keyPath(key), value, "expected a single value, not a list or mapping")
      return nil
    }
    return (scalar.string, value)
  }

  func string(_ key: String, required: Bool = false) -> String? {
    guard let (text, node) = scalar(key, required: required) else { return nil }
    if text.isEmpty {
      log.add(keyPath(key), node, "must not be empty")
      return nil
    }
    return text
  }

  /// A scalar parsed by `parse` and checked against `range`; `expected` says what a value
  /// looks like and `unit` follows each number in the range message.
  private func bounded<T: Comparable>(
    _ key: String, required: Bool, range: ClosedRange<T>?, expected: String, unit: String = "",
    parse: (String) -> T?
  ) -> T? {
    guard let (text, node) = scalar(key, required: required) else { return nil }
    guard let value = parse(text) else {
      log.add(keyPath(key), node, "expected \(expected), got \"\(text)\"")
      return nil
    }
    if let range, !range.contains(value) {
      log.add(
        keyPath(key), node,
        "must be in \(range.lowerBound)\(unit)...\(range.upperBound)\(unit), got \(value)\(unit)")
      return nil
    }
    return value
  }

  func int(_ key: String, required: Bool = false, range: ClosedRange<Int>? = nil) -> Int? {
    bounded(key, required: required, range: range, expected: "an integer") { Int($0) }
  }

  func double(_ key: String, required: Bool = false, range: ClosedRange<Double>? = nil) -> Double? {
    bounded(key, required: required, range: range, expected: "a number") {
      Double($0).flatMap { $0.isFinite ? $0 : nil }
    }
  }

  func bool(_ key: String, required: Bool = false) -> Bool? {
    guard let (text, node) = scalar(key, required: required) else { return nil }
    switch text.lowercased() {
    case "true", "yes", "on": return true
    case "false", "no", "off": return false
    default:
      log.add(keyPath(key), node, "expected true or false, got \"\(text)\"")
      return nil
    }
  }

  func bytes(_ key: String, required: Bool = false) -> Int? {
    guard let (text, node) = scalar(key, required: required) else { return nil }
    guard let value = ByteSize.parse(text) else {
      log.add(keyPath(key), node, "expected a size such as 4GiB, 512MiB or 65536, got \"\(text)\"")
      return nil
    }
    return value
  }

  /// A duration such as `10s`, `500ms`, `2m` or a bare number of seconds.
  func seconds(_ key: String, required: Bool = false, range: ClosedRange<Double>? = nil) -> Double?
  {
    bounded(
      key, required: required, range: range, expected: "a duration such as 10s, 500ms or 2m",
      unit: "s", parse: parseDuration)
  }

  func hostPort(_ key: String, required: Bool = false) -> HostPort? {
    guard let (text, node) = scalar(key, required: required) else { return nil }
    guard let value = HostPort(text) else {
      log.add(keyPath(key), node, "expected host:port with a port in 0...65535, got \"\(text)\"")
      return nil
    }
    return value
  }

  /// The value under `key` as one of `allowed` (every case by default); anything else is a
  /// problem naming the allowed values.
  func choice<T: RawRepresentable & CaseIterable & Equatable>(
    _ key: String, required: Bool = false, among allowed: [T] = Array(T.allCases)
  ) -> T? where T.RawValue == String {
    guard let (text, node) = scalar(key, required: required) else { return nil }
    guard let value = T(rawValue: text), allowed.contains(value) else {
      let options = allowed.map(\.rawValue).joined(separator: " | ")
      log.add(keyPath(key), node, "expected one of \(options), got \"\(text)\"")
      return nil
    }
    return value
  }

  /// Readers for each mapping in a list under `key`.
  func list(_ key: String, required: Bool = false) -> [YAMLReader] {
    guard let value = child(key) else {
      if required { log.add(keyPath(key), node, "missing (required)") }
      return []
    }
    guard let sequence = value.sequence else {
      log.add(keyPath(key), value, "expected a list")
      return []
    }
    return sequence.enumerated().map { i, item in
      YAMLReader(node: item, path: "\(keyPath(key))[\(i)]", log: log)
    }
  }

  /// A reader for the mapping under `key`, if present.
  func section(_ key: String, required: Bool = false) -> YAMLReader? {
    guard let value = child(key) else {
      if required { log.add(keyPath(key), node, "missing (required)") }
      return nil
    }
    let reader = YAMLReader(node: value, path: keyPath(key), log: log)
    return reader.expectMapping() ? reader : nil
  }

  /// Records a problem at `key` (or at this mapping when the key is absent).
  func problem(_ key: String, _ message: String) {
    log.add(keyPath(key), child(key) ?? node, message)
  }
}

/// Seconds in `10s`, `500ms`, `2m`, `1h` or a bare number; nil if malformed or negative.
func parseDuration(_ text: String) -> Double? {
  let trimmed = text.trimmingCharacters(in: .whitespaces)
  for (suffix, factor) in [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
  where trimmed.hasSuffix(suffix) {
    guard let number = Double(trimmed.dropLast(suffix.count)), number.isFinite, number >= 0 else {
      return nil
    }
    return number * factor
  }
  guard let number = Double(trimmed), number.isFinite, number >= 0 else { return nil }
  return number
}

/// Levenshtein distance, for "did you mean" hints.
func editDistance(_ a: String, _ b: String) -> Int {
  let a = Array(a)
  let b = Array(b)
  var previous = Array(0...b.count)
  for i in 1...max(a.count, 1) where !a.isEmpty {
    var current = [i] + [Int](repeating: 0, count: b.count)
    for j in 1...max(b.count, 1) where !b.isEmpty {
      current[j] = min(
        previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return a.isEmpty ? b.count : previous[b.count]
}
