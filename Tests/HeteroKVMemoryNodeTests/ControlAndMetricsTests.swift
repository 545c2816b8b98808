import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import HeteroKVDaemon
import HeteroKVMemoryClient
import HeteroKVMemoryNode
import HeteroKVTransport
import HeteroKVWire
import Logging
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import HeteroKVTestSupport
import Testing

func withControlClient<T: Sendable>(
  _ address: HostPort,
  _ body: (Heterokv_V1_MemoryNodeControl.Client<HTTP2ClientTransport.Posix>) async throws -> T
) async throws -> T {
  try await withGRPCClient(
    transport: .http2NIOPosix(
      target: .ipv4(address: address.host, port: address.port), transportSecurity: .plaintext)
  ) { client in
    try await body(Heterokv_V1_MemoryNodeControl.Client(wrapping: client))
  }
}

/// Fetches `path` over plain HTTP/1.1 with a raw socket read (no client library needed).
func httpGet(_ host: String, _ port: Int, _ path: String) async throws -> String {
  let peer = try await RawPeer.connect(HostPort(host: host, port: port))
  var request = ByteBuffer()
  request.writeString("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")
  try await peer.write(request)
  return try await peer.readUntilClosed()
}

@Suite("Memory node control, metrics and transports")
struct ControlAndMetricsTests {
  @Test("the gRPC control service describes the node, reports stats and shards, drops sequences")
  func control() async throws {
    try await withRunningNodes([nodeConfiguration("ctl", capacity: 1 << 20, pageBytes: 4096)]) {
      nodes in
      let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
      for seq in [UInt64(1), 2] {
        for head in 0..<3 {
          _ = try await client.put(
            PutRequest(
              shard: ShardID(namespace: 4, sequence: seq, layer: 0, kvHead: UInt16(head)),
              startToken: 10,
              headDim: 32, values: .init(repeating: 1, count: 32 * 5),
              keys: head == 0 ? .init(repeating: 2, count: 32 * 5) : nil))
        }
      }
      await expectDataPlaneError(.unknownSequence) {
        _ = try await client.gather(
          GatherRequest(shard: ShardID(sequence: 1, layer: 0, kvHead: 0), tokens: [10]))
      }
      try await withControlClient(nodes[0].addresses.control) { control in
        let description = try await control.describe(.init())
        #expect(description.nodeID == "ctl")
        #expect(description.dataTransport == "tcp")
        #expect(description.dataAddress == nodes[0].addresses.data.description)
        #expect(description.capacityBytes == 1 << 20 && description.pageBytes == 4096)

        let stats = try await control.getStats(.init())
        #expect(stats.shardCount == 6 && stats.sequenceCount == 2 && stats.rowCount == 30)
        let expectedStored: UInt64 = 6 * 5 * 64 + 2 * 5 * 64  // values of 6 shards, keys of 2
        #expect(stats.storedBytes == expectedStored)
        let expectedUsed: UInt64 = 8 * 4096
        #expect(stats.usedBytes == expectedUsed)
        let put = try #require(stats.operations.first { $0.operation == "put" })
        let gather = try #require(stats.operations.first { $0.operation == "gather" })
        #expect(put.ok == 6 && put.failed == 0)
        #expect(gather.failed == 1)

        let shards = try await control.listShards(
          .with {
            $0.filterBySequence = true
            $0.namespace = 4
            $0.sequence = 2
          })
        #expect(shards.shards.count == 3)
        #expect(shards.shards.map(\.shard.kvHead) == [0, 1, 2])
        #expect(shards.shards[0].storesKeys && !shards.shards[1].storesKeys)
        #expect(
          shards.shards.allSatisfy { $0.startToken == 10 && $0.rowCount == 5 && $0.headDim == 32 })

        let dropped = try await control.dropSequence(
          .with {
            $0.namespace = 4
            $0.sequence = 1
          })
        #expect(dropped.shardsDropped == 3 && dropped.bytesFreed == 4 * 4096)
        do {
          _ = try await control.dropSequence(
            .with {
              $0.namespace = 4; $0.sequence = 1
            })
          Issue.record("expected not found")
        } catch let error as RPCError {
          #expect(error.code == .notFound)
        }
      }
      await client.close()
    }
  }

  @Test("the Prometheus endpoint reports requests by operation, latency and bytes stored")
  func metricsEndpoint() async throws {
    let registry = PrometheusCollectorRegistry()
    let factory = PrometheusMetricsFactory(registry: registry)
    let endpoint = MetricsEndpoint(
      registry: registry, host: "127.0.0.1", port: 0, logger: quietLogger)
    let group = ServiceGroup(
      configuration: .init(
        services: [.init(service: endpoint)], gracefulShutdownSignals: [], logger: quietLogger))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
      tasks.addTask { try await group.run() }
      let port = try await endpoint.listeningPort()
      try await withRunningNodes([nodeConfiguration("prom")], metricsFactory: factory) { nodes in
        let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
        let shard = ShardID(sequence: 1, layer: 0, kvHead: 0)
        _ = try await client.put(
          PutRequest(
            shard: shard, startToken: 0, headDim: 16, values: .init(repeating: 1, count: 160)))
        _ = try await client.gather(GatherRequest(shard: shard, tokens: [1, 2]))
        _ = try? await client.gather(GatherRequest(shard: shard, tokens: [99]))
        await client.close()
      }
      let text = try await httpGet("127.0.0.1", port, "/metrics")
      #expect(text.hasPrefix("HTTP/1.1 200 OK"))
      #expect(text.contains(#"hkv_memnode_requests_total{node="prom",op="put",result="ok"} 1"#))
      #expect(text.contains(#"hkv_memnode_requests_total{node="prom",op="gather",result="ok"} 1"#))
      #expect(
        text.contains(#"hkv_memnode_requests_total{node="prom",op="gather",result="error"} 1"#))
      #expect(text.contains(#"hkv_memnode_stored_bytes{node="prom"} 320"#))
      #expect(text.contains("hkv_memnode_request_duration_seconds_bucket"))
      let missing = try await httpGet("127.0.0.1", port, "/nothing")
      #expect(missing.hasPrefix("HTTP/1.1 404"))
      await group.triggerGracefulShutdown()
      try await tasks.waitForAll()
    }
  }

  @Test(
    "asking for RDMA where no device exists serves TCP and says why",
    .enabled(
      if: !RDMAAvailability.probe().isAvailable,
      "this host has an RDMA device; see the RDMA round-trip test"))
  func rdmaFallback() async throws {
    try await withRunningNodes([nodeConfiguration("r", transport: .rdma)]) { nodes in
      #expect(nodes[0].addresses.transport == .tcp)
      let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
      try await client.ping()
      await client.close()
      try await withControlClient(nodes[0].addresses.control) { control in
        let description = try await control.describe(.init())
        #expect(description.dataTransport == "tcp")
        #expect(description.transportNote.contains("RDMA was requested but"))
      }
    }
  }

  @Test(
    "the data plane over RDMA (rsockets) round-trips puts, gathers and partial attention",
    .enabled(
      if: RDMAAvailability.probe().isAvailable,
      "needs an RDMA device (soft-RoCE counts); this host has none"))
  func rdmaRoundTrip() async throws {
    try await withRunningNodes([nodeConfiguration("rdma", transport: .rdma)]) { nodes in
      #expect(nodes[0].addresses.transport == .rdma)
      let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
      var random = TestRandom(state: 3)
      let shard = ShardID(sequence: 1, layer: 0, kvHead: 0)
      let values = random.halves(500 * 64)
      _ = try await client.put(
        PutRequest(shard: shard, startToken: 0, headDim: 64, values: values, keys: values))
      let back = try await client.gather(GatherRequest(shard: shard, tokens: Array(0..<500)))
      #expect(back.valueArray == values)
      let partial = try await client.partialAttention(
        PartialAttentionRequest(
          shard: shard, mode: .exact, headDim: 64, scale: 0.125,
          heads: [.exact(tokens: [1, 2, 3], query: .init(repeating: 0.5, count: 64))]))
      let expected = referenceAttention(
        query: .init(repeating: 0.5, count: 64), keys: values, values: values, rows: [1, 2, 3],
        d: 64, scale: 0.125)
      #expect(relativeError(Array(partial.output(head: 0)), expected) < 1e-4)
      await client.close()
    }
  }
}
