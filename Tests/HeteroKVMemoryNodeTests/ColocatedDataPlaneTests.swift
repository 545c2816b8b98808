import Foundation
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVMemoryNode
import HeteroKVTestSupport
import HeteroKVTransport
import HeteroKVWire
import NIOCore
import Testing

/// `configuration` with its data plane also served to clients in the process.
func colocated(_ configuration: MemoryNodeConfiguration) -> MemoryNodeConfiguration {
  var c = configuration
  c.server.servesColocated = true
  return c
}

@Suite("Co-located data plane", .serialized)
struct ColocatedDataPlaneTests {
  @Test(
    "a node serving its process answers a connection there with no socket, as it answers over TCP; a node that does not is not found"
  )
  func servesAsTCPDoes() async throws {
    try await withRunningNodes([colocated(nodeConfiguration("near")), nodeConfiguration("far")]) {
      nodes in
      #expect(ColocatedDataPlaneServer.server(at: nodes[1].addresses.data) == nil)
      let server = try #require(ColocatedDataPlaneServer.server(at: nodes[0].addresses.data))
      let near = try server.connect()
      let tcp = try await TCPDataPlaneConnection.connect(
        host: nodes[0].addresses.data.host, port: nodes[0].addresses.data.port)
      var random = TestRandom(state: 11)
      let shard = ShardID(sequence: 1, layer: 0, kvHead: 0)
      let values = random.halves(300 * 64)
      _ = try await near.send(
        PutRequest(shard: shard, startToken: 0, headDim: 64, values: values))
      #expect(nodes[0].node.store.stats().rowCount == 300, "the co-located put stored its rows")
      let tokens: [UInt32] = [0, 7, 150, 299]
      let request = PartialAttentionRequest(
        shard: shard, mode: .weights, headDim: 64, scale: 0.125,
        heads: [.weighted(tokens: tokens, weights: [0.1, 0.2, 0.3, 0.4])])
      // Answered when started: the caller's thread served it.
      let started = near.start(
        opcode: PartialAttentionRequest.opcode, payload: request.encoded(), timeout: nil)
      let answered = try #require(started.result).get()
      let viaTCP = try await tcp.send(request)
      #expect(try PartialAttentionResponse(payload: answered, limits: .standard) == viaTCP)
      let gathered = try await near.send(GatherRequest(shard: shard, tokens: [7]))
      #expect(gathered.valueArray == Array(values[(7 * 64)..<(8 * 64)]))
      // The node's errors come back typed, as over TCP.
      await expectDataPlaneError(.indexOutOfRange) {
        _ = try await near.send(GatherRequest(shard: shard, tokens: [300]))
      }
      await tcp.close()
      // An answer larger than the client's own bound fails as an oversized frame would.
      let tight = try server.connect(limits: DataPlaneLimits(maxPayloadBytes: 1024))
      await expectDataPlaneError(.frameTooLarge) {
        _ = try await tight.send(GatherRequest(shard: shard, tokens: Array(0..<300)))
      }
      #expect(tight.isActive)

      // A client of the node finds it in the process and decodes the same answer.
      let before = server.requestsServed
      let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
      #expect(try await client.partialAttention(request).outputs == viaTCP.outputs)
      #expect(server.requestsServed == before + 1, "the client's request went through the node")
      await client.close()
    }
  }

  @Test(
    "the co-located path keeps the node's access: nothing is served before a credential, grants bound namespaces, a wrong proof closes the connection"
  )
  func keepsAccess() async throws {
    try await withRunningNodes([colocated(securedConfiguration())]) { nodes in
      let server = try #require(ColocatedDataPlaneServer.server(at: nodes[0].addresses.data))
      let anonymous = try server.connect()
      await expectDataPlaneError(.unauthenticated) {
        _ = try await anonymous.send(rowsRequest(namespace: 0, rows: 1))
      }
      #expect(nodes[0].node.store.stats().rowCount == 0, "a refused put stored rows")

      let alice = try server.connect()
      try await alice.authenticate(DataPlaneCredential(tenant: "alice", secret: "alice-secret"))
      _ = try await alice.send(rowsRequest(namespace: 5, rows: 2))
      await expectDataPlaneError(.permissionDenied) {
        _ = try await alice.send(rowsRequest(namespace: 0, rows: 1))
      }
      #expect(nodes[0].node.store.stats().rowCount == 2)

      let forger = try server.connect()
      await expectDataPlaneError(.unauthenticated) {
        try await forger.authenticate(DataPlaneCredential(tenant: "alice", secret: "guess"))
      }
      #expect(!forger.isActive, "a refused credential must close the connection")
      await expectDataPlaneError(.connectionClosed) { _ = try await forger.send(PingRequest()) }

      // The cluster's client authenticates on the co-located path too.
      let client = MemoryNodeClient(
        endpoint: nodes[0].endpoint, credential: DataPlaneCredential(secret: "cluster-secret"))
      try await client.ping()
      await client.close()
    }
  }

  @Test(
    "an oversized payload is refused and stores nothing; a second node at a served address is refused; a stopped node fails its connections and frees its address"
  )
  func boundsAndLifetime() async throws {
    var small = colocated(nodeConfiguration("small"))
    small.limits.maxPayloadBytes = 16 << 10
    let (connection, address) = try await withRunningNodes([small]) { nodes in
      let address = nodes[0].addresses.data
      let server = try #require(ColocatedDataPlaneServer.server(at: address))
      let connection = try server.connect()
      await expectDataPlaneError(.frameTooLarge) {
        _ = try await connection.send(rowsRequest(namespace: 0, rows: 200))
      }
      #expect(nodes[0].node.store.stats().rowCount == 0)
      _ = try await connection.send(rowsRequest(namespace: 0, rows: 10))
      #expect(connection.isActive, "a refused request leaves the connection usable")
      await expectDataPlaneError(.alreadyExists) {
        _ = try ColocatedDataPlaneServer.start(
          address: address, handler: SlowAttentionHandler(work: .zero))
      }
      return (connection, address)
    }
    #expect(ColocatedDataPlaneServer.server(at: address) == nil)
    #expect(!connection.isActive)
    await expectDataPlaneError(.connectionClosed) { _ = try await connection.send(PingRequest()) }
  }
}
