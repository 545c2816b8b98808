import Foundation
import HeteroKVConfig
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVWire

/// A cluster of child `hkv` processes: a coordinator, the memory nodes and a worker started
/// from one cluster file, each awaited until it prints `ready`, for `hkv cluster up` and
/// `hkv demo --processes` (which writes its file to a temporary directory, on free loopback
/// ports). Every child is told to stop with this process (`HKV_PARENT_PID`), so none outlives
/// a parent that was killed; `stop` sends SIGTERM to all of them and waits.
final class ChildCluster: @unchecked Sendable {
  let configuration: ClusterConfiguration
  let directory: URL
  /// The worker's engine API address, from its ready line.
  private(set) var engine: HostPort?
  /// Whether `stop` removes `directory` (a folder this cluster made).
  private let ownsDirectory: Bool
  private var children: [Process] = []

  private init(configuration: ClusterConfiguration, directory: URL, ownsDirectory: Bool) {
    self.configuration = configuration
    self.directory = directory
    self.ownsDirectory = ownsDirectory
  }

  /// The children of every role `file` names; logs go to `logs` (`ROLE-N.log`).
  static func start(file: String, logs: URL, ownsDirectory: Bool = false) throws -> ChildCluster {
    let configuration: ClusterConfiguration
    do {
      configuration = try ClusterConfiguration.load(path: file)
    } catch {
      throw CommandFailure(description: "\(error)")
    }
    guard configuration.coordinator != nil else {
      throw CommandFailure(description: "\(file) has no coordinator section")
    }
    try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
    let cluster = ChildCluster(
      configuration: configuration, directory: logs, ownsDirectory: ownsDirectory)
    do {
      let replicas = configuration.coordinator?.replicas.map(\.id) ?? []
      for id in replicas.isEmpty ? [nil] : replicas.map(Optional.some) {
        _ = try cluster.spawn(
          ["coordinator", "--config", file, "--log-level", "error"]
            + (id.map { ["--id", $0] } ?? []))
      }
      for node in configuration.memoryNodes {
        _ = try cluster.spawn([
          "memnode", "--config", file, "--id", node.id, "--log-level", "error",
        ])
      }
      let worker = try cluster.spawn(["worker", "--config", file, "--log-level", "error"])
      cluster.engine = worker["engine"].flatMap(HostPort.init)
    } catch {
      cluster.stop()
      throw error
    }
    return cluster
  }

  static func start(
    model: ModelGeometry, memoryNodes: Int, capacityBytes: Int, replication: Int, policy: String,
    budget: Double, keyCodec: String, keyBits: Int, tau: Double?, outputMode: String
  ) throws -> ChildCluster {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
      "hkv-demo-\(ProcessInfo.processInfo.processIdentifier)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    func port() throws -> HostPort { HostPort(host: "127.0.0.1", port: try freePort()) }
    guard let policy = BudgetPolicyKind(rawValue: policy),
      let keyCodec = KeyCodecKind(rawValue: keyCodec),
      let outputMode = HCAttentionOutputMode(rawValue: outputMode)
    else {
      throw CommandFailure(
        description: "the demo's cluster: unknown policy, key codec or output mode")
    }
    var worker = WorkerSettings(
      control: try port(), keyCodec: keyCodec, keyBits: keyBits, tau: tau)
    worker.outputMode = outputMode
    let budgets = BudgetSettings(policy: policy, memoryFraction: budget)
      .recallingOnly(with: outputMode)
    let planned = ClusterConfiguration(
      name: "demo", model: model,
      coordinator: CoordinatorSettings(
        control: try port(), stateDirectory: directory.appendingPathComponent("coordinator").path,
        leaseSeconds: 5, heartbeatSeconds: 1),
      memoryNodes: try (0..<memoryNodes).map { i in
        MemoryNodeSettings(
          id: "mem-\(i)", data: try port(), control: try port(), capacityBytes: capacityBytes)
      },
      worker: worker, budgets: budgets,
      replication: replication)
    let file = directory.appendingPathComponent("cluster.yaml")
    do {
      try planned.yaml().write(to: file, atomically: true, encoding: .utf8)
    } catch {
      throw CommandFailure(description: "the demo's cluster file: \(error)")
    }
    return try start(file: file.path, logs: directory, ownsDirectory: true)
  }

  /// Starts `hkv arguments...`, waits (up to 60 s) for its `ready` line and returns that
  /// line's `key=value` fields.
  private func spawn(_ arguments: [String]) throws -> [String: String] {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
    if !FileManager.default.isExecutableFile(atPath: process.executableURL!.path) {
      process.executableURL = Bundle.main.executableURL
    }
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment[ParentProcessWatch.environmentKey] = "\(getpid())"
    process.environment = environment
    let out = Pipe()
    process.standardOutput = out
    process.standardError =
      FileHandle(
        forWritingAtPath: logFile(for: arguments[0], index: children.count).path)
      ?? FileHandle.standardError
    try process.run()
    children.append(process)
    var seen = Data()
    let deadline = Date().addingTimeInterval(60)
    while Date() < deadline {
      let chunk = out.fileHandleForReading.availableData
      if chunk.isEmpty {
        let log =
          (try? String(
            contentsOf: logFile(for: arguments[0], index: children.count - 1), encoding: .utf8))
          ?? ""
        throw CommandFailure(
          description:
            "hkv \(arguments.joined(separator: " ")) exited before it was ready\(log.isEmpty ? "" : ":\n" + log)"
        )
      }
      seen += chunk
      let text = String(decoding: seen, as: UTF8.self)
      if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("ready ") }),
        text.contains("\n")
      {
        var fields: [String: String] = [:]
        for pair in line.split(separator: " ").dropFirst() {
          let parts = pair.split(separator: "=", maxSplits: 1)
          if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
      }
    }
    throw CommandFailure(description: "hkv \(arguments[0]) was not ready within 60 s")
  }

  private func logFile(for role: String, index: Int) -> URL {
    let url = directory.appendingPathComponent("\(role)-\(index).log")
    if !FileManager.default.fileExists(atPath: url.path) {
      _ = FileManager.default.createFile(atPath: url.path, contents: nil)
    }
    return url
  }

  /// Every child started, by role and process id.
  var started: [(role: String, pid: Int32)] {
    children.map { ($0.arguments?.first ?? "?", $0.processIdentifier) }
  }

  /// The children still running, by role and process id.
  var running: [(role: String, pid: Int32)] {
    children.filter(\.isRunning).map { ($0.arguments?.first ?? "?", $0.processIdentifier) }
  }

  /// Sends SIGTERM to every child, then SIGKILL to any still running after `grace`, and waits
  /// for all of them.
  func stop(grace: Duration = .seconds(20)) {
    for child in children.reversed() where child.isRunning { child.terminate() }
    let deadline = ContinuousClock.now + grace
    while children.contains(where: \.isRunning), ContinuousClock.now < deadline {
      usleep(50_000)
    }
    for child in children where child.isRunning { kill(child.processIdentifier, SIGKILL) }
    for child in children { child.waitUntilExit() }
    if ownsDirectory { try? FileManager.default.removeItem(at: directory) }
  }
}

/// A TCP port free on loopback now (bound to port 0, then released).
func freePort() throws -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { throw CommandFailure(description: "socket(): \(errno)") }
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_port = 0
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
      bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
    }
  }
  guard bound else { throw CommandFailure(description: "cannot bind a loopback port: \(errno)") }
  return Int(UInt16(bigEndian: address.sin_port))
}
