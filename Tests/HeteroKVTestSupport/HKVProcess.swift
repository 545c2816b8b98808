import Foundation
import HeteroKVWire
import Logging

/// A logger that drops everything, for services started inside tests.
public let quietLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// The `hkv` executable built next to the running test bundle.
public func hkvExecutable() throws -> URL {
  let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
  let url = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("hkv")
  guard FileManager.default.isExecutableFile(atPath: url.path) else {
    throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: url.path])
  }
  return url
}

/// Runs `hkv arguments` to completion; returns its exit status, stdout and stderr.
public func runHKV(_ arguments: [String]) throws -> (status: Int32, out: Data, err: String) {
  let process = Process()
  process.executableURL = try hkvExecutable()
  process.arguments = arguments
  let out = Pipe()
  let err = Pipe()
  process.standardOutput = out
  process.standardError = err
  try process.run()
  let output = out.fileHandleForReading.readDataToEndOfFile()
  let errors = err.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  return (process.terminationStatus, output, String(decoding: errors, as: UTF8.self))
}

/// An `hkv` daemon (`memnode`, `coordinator`) run as a child process: started, read up to its
/// `ready key=value ...` line, and stopped by SIGTERM or SIGKILL. Its log goes to a file, so it
/// never blocks on a full pipe; killed on deinit if still running.
public final class HKVDaemonProcess {
  public let process = Process()
  private let output = Pipe()
  /// Where its stderr goes.
  public let logPath: String
  /// The fields of its ready line.
  public private(set) var fields: [String: String] = [:]

  /// Starts `hkv arguments`, inside network namespace `namespace` when given (through
  /// `ip netns exec`, which execs `hkv` in place: the process is the daemon itself).
  public init(_ arguments: [String], networkNamespace namespace: String? = nil) throws {
    logPath = NSTemporaryDirectory() + "hkv-daemon-\(UUID().uuidString).log"
    _ = FileManager.default.createFile(atPath: logPath, contents: nil)
    if let namespace {
      process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
      process.arguments = ["netns", "exec", namespace, try hkvExecutable().path] + arguments
    } else {
      process.executableURL = try hkvExecutable()
      process.arguments = arguments
    }
    process.standardOutput = output
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
    try process.run()
  }

  deinit {
    kill()
    try? FileManager.default.removeItem(atPath: logPath)
  }

  /// Waits for the ready line (or the process's end, which throws with its log).
  public func waitUntilReady() throws {
    var line = Data()
    while true {
      let byte = output.fileHandleForReading.readData(ofLength: 1)
      if byte.isEmpty {
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        throw CocoaError(
          .fileReadUnknown,
          userInfo: [NSLocalizedDescriptionKey: "hkv exited before ready: \(log)"])
      }
      if byte == Data("\n".utf8) { break }
      line.append(byte)
    }
    for part in String(decoding: line, as: UTF8.self).split(separator: " ").dropFirst() {
      let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
      if kv.count == 2 { fields[kv[0]] = kv[1] }
    }
  }

  /// The address in ready field `key`; nil when absent or `none`.
  public func address(_ key: String) -> HostPort? { fields[key].flatMap(HostPort.init) }

  /// Sends SIGTERM and waits up to `timeout` for the exit status; nil when it had to be killed.
  public func terminate(timeout: Duration = .seconds(15)) async throws -> Int32? {
    process.terminate()
    let deadline = ContinuousClock.now + timeout
    while process.isRunning && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    if process.isRunning {
      kill()
      return nil
    }
    return process.terminationStatus
  }

  /// Kills it without warning (SIGKILL), as a crash would.
  /// The child's process id (for reading /proc/PID).
  public var processID: Int32 { process.processIdentifier }

  /// The child's resident set size in bytes, from /proc/PID/status (nil where unreadable).
  public func residentBytes() -> Int? {
    guard
      let text = try? String(contentsOfFile: "/proc/\(processID)/status", encoding: .utf8),
      let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
      let kib = Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "")
    else { return nil }
    return kib * 1024
  }

  public func kill() {
    guard process.isRunning else { return }
    Foundation.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }
}

/// A coordinator process started on a free port, and the cluster file its members use.
public struct StartedCoordinator {
  /// The coordinator process.
  public let process: HKVDaemonProcess
  /// Its gRPC address.
  public let address: HostPort
  /// `cluster.yaml` in the test's folder, naming the coordinator's real port.
  public let clusterFile: String
}

/// Starts `hkv coordinator` from `clusterFile(0)` (port 0: the kernel picks one), then writes
/// `clusterFile(port)` with the port it got to `directory/cluster.yaml`, for the members.
public func startCoordinator(
  in directory: URL, clusterFile: (_ coordinatorPort: Int) -> String
) throws -> StartedCoordinator {
  let first = directory.appendingPathComponent("coordinator.yaml").path
  try clusterFile(0).write(toFile: first, atomically: true, encoding: .utf8)
  let coordinator = try HKVDaemonProcess(["coordinator", "--config", first])
  try coordinator.waitUntilReady()
  guard let address = coordinator.address("coordinator") else {
    throw CocoaError(
      .fileReadUnknown,
      userInfo: [NSLocalizedDescriptionKey: "the coordinator's ready line has no address"])
  }
  let file = directory.appendingPathComponent("cluster.yaml").path
  try clusterFile(address.port).write(toFile: file, atomically: true, encoding: .utf8)
  return StartedCoordinator(process: coordinator, address: address, clusterFile: file)
}
