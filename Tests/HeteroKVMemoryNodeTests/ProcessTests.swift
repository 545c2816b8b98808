import Foundation
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire
import Testing

/// The `hkv` executable built next to this test bundle.
func hkvExecutable() throws -> URL {
  let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
  let url = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("hkv")
  guard FileManager.default.isExecutableFile(atPath: url.path) else {
    throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: url.path])
  }
  return url
}

/// An `hkv memnode` child process, with the addresses from its ready line.
final class MemoryNodeProcess {
  let process = Process()
  private let output = Pipe()
  private let errors = Pipe()
  private(set) var data = HostPort(host: "", port: 0)
  private(set) var control = HostPort(host: "", port: 0)
  /// Nil when the daemon runs without a metrics endpoint.
  private(set) var metrics: HostPort?

  init(arguments: [String]) throws {
    process.executableURL = try hkvExecutable()
    process.arguments = ["memnode"] + arguments
    process.standardOutput = output
    process.standardError = errors
    try process.run()
  }

  /// Waits for the ready line (or the process's end) and parses it.
  func waitUntilReady() throws {
    var line = Data()
    while true {
      let byte = output.fileHandleForReading.readData(ofLength: 1)
      if byte.isEmpty {
        let log = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        throw CocoaError(
          .fileReadUnknown,
          userInfo: [NSLocalizedDescriptionKey: "memnode exited before ready: \(log)"])
      }
      if byte == Data("\n".utf8) { break }
      line.append(byte)
    }
    let text = String(decoding: line, as: UTF8.self)
    var fields: [String: String] = [:]
    for part in text.split(separator: " ").dropFirst() {
      let kv = part.split(separator: "=", maxSplits: 1)
      if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
    }
    data = try #require(fields["data"].flatMap(HostPort.init))
    control = try #require(fields["control"].flatMap(HostPort.init))
    metrics = fields["metrics"].flatMap(HostPort.init)
  }

  /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
  func terminate(timeout: Duration = .seconds(15)) async throws -> Int32 {
    process.terminate()
    let deadline = ContinuousClock.now + timeout
    while process.isRunning && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    if process.isRunning {
      kill(process.processIdentifier, SIGKILL)
      Issue.record("memnode did not exit within \(timeout) of SIGTERM")
    }
    process.waitUntilExit()
    return process.terminationStatus
  }
}

@Suite("hkv memnode as a separate process")
struct ProcessTests {
  @Test(
    "a daemon from a cluster file serves, merges with an in-process node, reports metrics, stops on SIGTERM and restarts empty"
  )
  func daemon() async throws {
    let config = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-\(UUID()).yaml")
    try """
    cluster: test
    memory_nodes:
      - id: proc-0
        data: 127.0.0.1:0
        control: 127.0.0.1:0
        metrics: 127.0.0.1:0
        capacity: 32MiB
        page_size: 16KiB
    """.write(to: config, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: config) }

    let child = try MemoryNodeProcess(arguments: ["--config", config.path, "--id", "proc-0"])
    try child.waitUntilReady()
    let dataPort = child.data.port
    var random = TestRandom(state: 99)
    let d = 64
    let keys = random.halves(1000 * d)
    let values = random.halves(1000 * d)
    let query = (0..<d).map { _ in random.float() }
    let childData = child.data
    let shards = [
      ShardID(sequence: 3, layer: 1, kvHead: 0, chunk: 0),
      ShardID(sequence: 3, layer: 1, kvHead: 0, chunk: 1),
    ]
    try await withRunningNodes([nodeConfiguration("inproc")]) { nodes in
      let tier = MemoryTierClient(endpoints: [
        nodes[0].endpoint, MemoryNodeEndpoint(id: "proc-0", data: childData),
      ])
      for (i, node) in ["inproc", "proc-0"].enumerated() {
        let range = i * 500 * d..<(i + 1) * 500 * d
        _ = try await tier.node(node).put(
          PutRequest(
            shard: shards[i], startToken: UInt32(i * 500), headDim: d, values: Array(values[range]),
            keys: Array(keys[range])))
      }
      let chosen = (0..<1000).filter { $0 % 7 == 0 }
      let merged = try await tier.mergedAttention([
        (
          "inproc",
          PartialAttentionRequest(
            shard: shards[0], mode: .exact, headDim: d, scale: 0.125,
            heads: [.exact(tokens: chosen.filter { $0 < 500 }.map(UInt32.init), query: query)])
        ),
        (
          "proc-0",
          PartialAttentionRequest(
            shard: shards[1], mode: .exact, headDim: d, scale: 0.125,
            heads: [.exact(tokens: chosen.filter { $0 >= 500 }.map(UInt32.init), query: query)])
        ),
      ])
      let expected = referenceAttention(
        query: query, keys: keys, values: values, rows: chosen, d: d, scale: 0.125)
      #expect(relativeError(Array(merged.output(head: 0)), expected) < 1e-4)
      await tier.close()
    }
    let metricsAddress = try #require(child.metrics)
    let metrics = try await httpGet(metricsAddress.host, metricsAddress.port, "/metrics")
    #expect(metrics.contains(#"hkv_memnode_requests_total{node="proc-0",op="put",result="ok"} 1"#))
    #expect(
      metrics.contains(
        #"hkv_memnode_requests_total{node="proc-0",op="partial_attention",result="ok"} 1"#))
    #expect(try await child.terminate() == 0)

    // Memory is volatile: the same node restarted on the same port holds nothing.
    let restarted = try MemoryNodeProcess(arguments: [
      "--id", "proc-0", "--data", "127.0.0.1:\(dataPort)", "--control", "127.0.0.1:0", "--metrics",
      "none",
      "--capacity", "32MiB",
    ])
    defer { if restarted.process.isRunning { restarted.process.terminate() } }
    try restarted.waitUntilReady()
    #expect(restarted.metrics == nil)
    let client = MemoryNodeClient(
      endpoint: MemoryNodeEndpoint(id: "proc-0", data: HostPort(host: "127.0.0.1", port: dataPort)))
    await expectDataPlaneError(.unknownSequence) {
      _ = try await client.gather(GatherRequest(shard: shards[1], tokens: [500]))
    }
    await client.close()
    #expect(try await restarted.terminate() == 0)
  }

  @Test("a bad cluster file stops the daemon at start with every problem listed")
  func badConfig() throws {
    let config = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-\(UUID()).yaml")
    try """
    cluster: test
    memory_nodes:
      - id: a
        data: 127.0.0.1:7000
        control: 127.0.0.1:notaport
        capacity: lots
        transprot: tcp
    """.write(to: config, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: config) }
    let process = Process()
    process.executableURL = try hkvExecutable()
    process.arguments = ["memnode", "--config", config.path, "--id", "a"]
    let errors = Pipe()
    process.standardError = errors
    process.standardOutput = Pipe()
    try process.run()
    process.waitUntilExit()
    let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(process.terminationStatus != 0)
    #expect(text.contains("3 problems"), "\(text)")
    #expect(text.contains(":5: memory_nodes[0].control: expected host:port"))
    #expect(text.contains(":6: memory_nodes[0].capacity: expected a size"))
    #expect(text.contains(#"memory_nodes[0].transprot: unknown key (did you mean "transport"?)"#))
  }
}
