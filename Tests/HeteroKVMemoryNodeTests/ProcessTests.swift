import Foundation
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVTestSupport
import HeteroKVWire
import Testing

@Suite("hkv memnode as a separate process")
struct ProcessTests {
  @Test(
    "a daemon from a cluster file serves, merges with an in-process node, reports metrics, stops on SIGTERM and restarts empty"
  )
  func daemon() async throws {
    let config = try oneNodeClusterFile("proc-0")
    defer { try? FileManager.default.removeItem(at: config) }

    let child = try HKVDaemonProcess(["memnode", "--config", config.path, "--id", "proc-0"])
    try child.waitUntilReady()
    let dataPort = try #require(child.address("data")).port
    var random = TestRandom(state: 99)
    let d = 64
    let keys = random.halves(1000 * d)
    let values = random.halves(1000 * d)
    let query = (0..<d).map { _ in random.float() }
    let childData = try #require(child.address("data"))
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
    let metricsAddress = try #require(child.address("metrics"))
    let metrics = try await httpGet(metricsAddress.host, metricsAddress.port, "/metrics")
    #expect(metrics.contains(#"hkv_memnode_requests_total{node="proc-0",op="put",result="ok"} 1"#))
    #expect(
      metrics.contains(
        #"hkv_memnode_requests_total{node="proc-0",op="partial_attention",result="ok"} 1"#))
    #expect(try await child.terminate() == 0)

    // Memory is volatile: the same node restarted on the same port holds nothing.
    let restarted = try HKVDaemonProcess([
      "memnode", "--id", "proc-0", "--data", "127.0.0.1:\(dataPort)", "--control", "127.0.0.1:0",
      "--metrics",
      "none",
      "--capacity", "32MiB",
    ])
    try restarted.waitUntilReady()
    #expect(restarted.address("metrics") == nil)
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
    let (status, _, text) = try runHKV(["memnode", "--config", config.path, "--id", "a"])
    #expect(status != 0)
    #expect(text.contains("3 problems"), "\(text)")
    #expect(text.contains(":5: memory_nodes[0].control: expected host:port"))
    #expect(text.contains(":6: memory_nodes[0].capacity: expected a size"))
    #expect(text.contains(#"memory_nodes[0].transprot: unknown key (did you mean "transport"?)"#))
  }
}
