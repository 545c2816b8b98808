import Foundation
import HeteroKVConfig
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVWire

/// A cluster of child `hkv` processes on loopback for `hkv demo --processes`: a cluster file
/// written to a temporary directory (free ports picked by binding port 0), then a coordinator,
/// the memory nodes and a worker started from it, each awaited until it prints `ready`.
/// `stop` sends SIGTERM to all of them.
final class ChildCluster: @unchecked Sendable {
  let configuration: ClusterConfiguration
  let directory: URL
  private var children: [Process] = []

  private init(configuration: ClusterConfiguration, directory: URL) {
    self.configuration = configuration
    self.directory = directory
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
    let configuration: ClusterConfiguration
    do {
      try planned.yaml().write(to: file, atomically: true, encoding: .utf8)
      configuration = try ClusterConfiguration.load(path: file.path)
    } catch {
      throw CommandFailure(description: "the demo's cluster file: \(error)")
    }
    let cluster = ChildCluster(configuration: configuration, directory: directory)
    do {
      try cluster.spawn(["coordinator", "--config", file.path, "--log-level", "error"])
      for i in 0..<memoryNodes {
        try cluster.spawn([
          "memnode", "--config", file.path, "--id", "mem-\(i)", "--log-level", "error",
        ])
      }
      try cluster.spawn(["worker", "--config", file.path, "--log-level", "error"])
    } catch {
      cluster.stop()
      throw error
    }
    return cluster
  }

  /// Starts `hkv arguments...` and waits (up to 60 s) for its `ready` line.
  private func spawn(_ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
    if !FileManager.default.isExecutableFile(atPath: process.executableURL!.path) {
      process.executableURL = Bundle.main.executableURL
    }
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError =
      FileHandle(
        forWritingAtPath: directory.appendingPathComponent("\(arguments[0])-\(children.count).log")
          .path)
      ?? FileHandle.standardError
    try process.run()
    children.append(process)
    var seen = Data()
    let deadline = Date().addingTimeInterval(60)
    while Date() < deadline {
      let chunk = out.fileHandleForReading.availableData
      if chunk.isEmpty {
        throw CommandFailure(
          description: "hkv \(arguments.joined(separator: " ")) exited before it was ready")
      }
      seen += chunk
      if String(decoding: seen, as: UTF8.self).contains("ready ") { return }
    }
    throw CommandFailure(description: "hkv \(arguments[0]) was not ready within 60 s")
  }

  func stop() {
    for child in children.reversed() where child.isRunning { child.terminate() }
    for child in children { child.waitUntilExit() }
    try? FileManager.default.removeItem(at: directory)
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
