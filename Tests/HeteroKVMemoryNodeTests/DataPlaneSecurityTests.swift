import Foundation
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVMemoryNode
import HeteroKVTestSupport
import HeteroKVTransport
import HeteroKVWire
import NIOCore
import Testing

/// A node whose data plane requires the cluster token, with one tenant bound to namespace 5
/// and a 64 KiB quota.
func securedConfiguration(
  _ id: String = "secure", idle: Duration = .seconds(600), partial: Duration = .seconds(10),
  maxConnections: Int = 1024
) -> MemoryNodeConfiguration {
  var c = nodeConfiguration(id, capacity: 8 << 20, pageBytes: 4096)
  c.server = DataPlaneServerOptions(
    access: DataPlaneAccess(
      clusterToken: "cluster-secret",
      tenants: [
        "alice": .init(
          secret: "alice-secret",
          grant: DataPlaneGrant(tenant: "alice", namespaces: [5], quotaBytes: 64 << 10))
      ]),
    maxConnections: maxConnections, idleTimeout: idle, partialFrameTimeout: partial)
  return c
}

func rowsRequest(namespace: UInt32, rows: Int, start: UInt32 = 0) -> PutRequest {
  PutRequest(
    shard: ShardID(namespace: namespace, sequence: 1, layer: 0, kvHead: 0), startToken: start,
    headDim: 64, values: (0..<(rows * 64)).map { Float16(Float($0 % 97) / 97) })
}

/// One request over a raw connection; the error it got back, or nil for a success.
func rawCall(_ peer: RawPeer, _ opcode: Opcode, _ payload: ByteBuffer, id: UInt64) async throws
  -> HeteroKVError?
{
  try await peer.write(
    Frame(opcode: opcode.rawValue, flags: [], requestID: id, payload: payload).serialized())
  guard case .frame(let reply) = try await peer.nextFrame() else {
    Issue.record("no answer to \(opcode.name)")
    return nil
  }
  return reply.decodedError()
}

@Suite("Data-plane security")
struct DataPlaneSecurityTests {
  @Test(
    "without a credential nothing is served and nothing changes; a wrong proof is refused and closes the connection"
  )
  func unauthenticatedIsRefused() async throws {
    try await withRunningNodes([securedConfiguration()]) { nodes in
      let endpoint = nodes[0].endpoint
      let peer = try await RawPeer.connect(endpoint.data)
      let put = try await rawCall(
        peer, .put, rowsRequest(namespace: 0, rows: 1).encoded(), id: 1)
      #expect(put?.code == .unauthenticated, "\(String(describing: put))")
      let drop = try await rawCall(peer, .drop, DropRequest.namespace(0).encoded(), id: 2)
      #expect(drop?.code == .unauthenticated)
      let gather = try await rawCall(
        peer, .gather,
        GatherRequest(shard: ShardID(namespace: 0, sequence: 1, layer: 0, kvHead: 0), tokens: [0])
          .encoded(), id: 3)
      #expect(gather?.code == .unauthenticated)
      #expect(nodes[0].node.store.stats().rowCount == 0, "a refused put stored rows")

      // A proof made with the wrong secret: refused, and the connection is closed.
      let challenge = try await rawCallPayload(peer, .challenge, ByteBuffer(), id: 4)
      let nonce = try ChallengeResponse(payload: challenge, limits: .standard).nonce
      let forged = DataPlaneCredential(secret: "guess").proof(nonce: nonce)
      let refused = try await rawCall(
        peer, .authenticate,
        AuthenticateRequest(tenant: DataPlaneCredential.clusterTenant, proof: forged).encoded(),
        id: 5)
      #expect(refused?.code == .unauthenticated)
      #expect(try await peer.nextFrame() == nil, "a refused credential must close the connection")
      await peer.close()

      // A client without a credential gets the same typed refusal.
      let anonymous = MemoryNodeClient(endpoint: endpoint, connections: 1)
      await expectDataPlaneError(.unauthenticated) {
        _ = try await anonymous.put(rowsRequest(namespace: 0, rows: 1))
      }
      // With the cluster token everything works.
      let member = MemoryNodeClient(
        endpoint: endpoint, connections: 1,
        credential: DataPlaneCredential(secret: "cluster-secret"))
      _ = try await member.put(rowsRequest(namespace: 0, rows: 4))
      #expect(nodes[0].node.store.stats().rowCount == 4)
      await anonymous.close()
      await member.close()
    }
  }

  @Test("a tenant reaches only its namespaces and its quota; the cluster token reaches all")
  func tenantsAreBound() async throws {
    try await withRunningNodes([securedConfiguration()]) { nodes in
      let endpoint = nodes[0].endpoint
      let member = MemoryNodeClient(
        endpoint: endpoint, connections: 1,
        credential: DataPlaneCredential(secret: "cluster-secret"))
      _ = try await member.put(rowsRequest(namespace: 0, rows: 8))
      let alice = MemoryNodeClient(
        endpoint: endpoint, connections: 1,
        credential: DataPlaneCredential(tenant: "alice", secret: "alice-secret"))
      _ = try await alice.put(rowsRequest(namespace: 5, rows: 8))
      let other = ShardID(namespace: 0, sequence: 1, layer: 0, kvHead: 0)
      await expectDataPlaneError(.permissionDenied) {
        _ = try await alice.gather(GatherRequest(shard: other, tokens: [0, 1]))
      }
      await expectDataPlaneError(.permissionDenied) {
        _ = try await alice.put(rowsRequest(namespace: 0, rows: 1, start: 8))
      }
      await expectDataPlaneError(.permissionDenied) { _ = try await alice.drop(.namespace(0)) }
      await expectDataPlaneError(.permissionDenied) {
        _ = try await alice.partialAttention(
          PartialAttentionRequest(
            shard: other, mode: .weights, headDim: 64, scale: 0.125,
            heads: [.weighted(tokens: [0], weights: [1])]))
      }
      // 64 KiB of quota: 8 rows of 128 bytes are in, 512 more rows (64 KiB) are not.
      let over = await expectDataPlaneError(.resourceExhausted) {
        _ = try await alice.put(rowsRequest(namespace: 5, rows: 512, start: 8))
      }
      #expect(over?.message.contains("quota") == true, "\(String(describing: over))")
      // Nothing of the refused calls changed the store: the other tenant's rows are whole.
      let back = try await member.gather(GatherRequest(shard: other, tokens: Array(0..<8)))
      #expect(back.rowCount == 8)
      #expect(nodes[0].node.store.stats().rowCount == 16)
      // Alice's own rows are hers to read and drop.
      let mine = try await alice.gather(
        GatherRequest(shard: ShardID(namespace: 5, sequence: 1, layer: 0, kvHead: 0), tokens: [7]))
      #expect(mine.rowCount == 1)
      #expect(try await alice.drop(.namespace(5)).shardsDropped == 1)
      await alice.close()
      await member.close()
    }
  }

  @Test(
    "idle and stalled connections are closed by their timeouts while a working client is served; the cap refuses more"
  )
  func timeoutsAndCap() async throws {
    try await withRunningNodes([
      securedConfiguration(
        idle: .milliseconds(400), partial: .milliseconds(200), maxConnections: 1100)
    ]) { nodes in
      let endpoint = nodes[0].endpoint
      var idle: [RawPeer] = []
      for _ in 0..<1000 { idle.append(try await RawPeer.connect(endpoint.data)) }
      // A stalled frame: half a header.
      let stalled = try await RawPeer.connect(endpoint.data)
      var half = ByteBuffer()
      half.writeBytes(
        Array(rowsRequest(namespace: 0, rows: 1).encoded().readableBytesView.prefix(10)))
      try await stalled.write(half)
      let member = MemoryNodeClient(
        endpoint: endpoint, connections: 1,
        credential: DataPlaneCredential(secret: "cluster-secret"))
      // The working client keeps talking (more often than the idle timeout) and is served.
      let started = ContinuousClock.now
      while ContinuousClock.now - started < .milliseconds(1200) {
        try await member.ping()
        try await Task.sleep(for: .milliseconds(100))
      }
      #expect(try await stalled.nextFrame(timeout: .seconds(2)) == nil, "stalled peer not closed")
      var closed = 0
      for peer in idle where try await peer.nextFrame(timeout: .seconds(2)) == nil { closed += 1 }
      #expect(closed == 1000)
      try await member.ping()
      for peer in idle { await peer.close() }
      await stalled.close()

      // Over the cap a connection is closed on accept.
      var held: [RawPeer] = []
      for _ in 0..<1100 { held.append(try await RawPeer.connect(endpoint.data)) }
      let extra = try await RawPeer.connect(endpoint.data)
      #expect(try await extra.nextFrame(timeout: .seconds(2)) == nil, "the cap let one more in")
      for peer in held { await peer.close() }
      await extra.close()
      await member.close()
    }
  }
}

/// The payload of a successful raw call.
func rawCallPayload(_ peer: RawPeer, _ opcode: Opcode, _ payload: ByteBuffer, id: UInt64)
  async throws -> ByteBuffer
{
  try await peer.write(
    Frame(opcode: opcode.rawValue, flags: [], requestID: id, payload: payload).serialized())
  guard case .frame(let reply) = try await peer.nextFrame(), reply.decodedError() == nil else {
    throw HeteroKVError(.internalError, "\(opcode.name) was not answered")
  }
  return reply.payload
}

@Suite("Bounded work on the data plane")
struct BoundedWorkTests {
  @Test(
    "a maximal amplification frame (one token repeated across 128 heads) is refused fast, without the node's memory growing"
  )
  func amplificationIsRefused() async throws {
    let config = try oneNodeClusterFile("amp-0", cluster: "bounded")
    defer { try? FileManager.default.removeItem(at: config) }
    let child = try HKVDaemonProcess(["memnode", "--config", config.path, "--id", "amp-0"])
    try child.waitUntilReady()
    defer { child.kill() }
    let data = try #require(child.address("data"))
    let client = MemoryNodeClient(endpoint: MemoryNodeEndpoint(id: "amp-0", data: data))
    let d = 64
    let shard = ShardID(namespace: 0, sequence: 1, layer: 0, kvHead: 0)
    let rows = (0..<(1000 * d)).map { Float16(Float($0 % 13) / 13) }
    _ = try await client.put(
      PutRequest(shard: shard, startToken: 0, headDim: d, values: rows, keys: rows))

    // One token ~16M times (a full 64 MiB frame), shared by 128 exact heads: 2^31 score
    // cells and 16M row reads per head if it were served.
    let repeats = 16_000_000
    var payload = ByteBuffer()
    shard.encode(into: &payload)
    payload.writeInteger(PartialAttentionRequest.Mode.exact.rawValue)
    payload.writeInteger(UInt8(1))  // shared tokens
    payload.writeInteger(UInt16(128), endianness: .little)
    payload.writeInteger(UInt16(d), endianness: .little)
    payload.writeInteger(Float(0.125).bitPattern, endianness: .little)
    payload.writeInteger(UInt32(repeats), endianness: .little)
    payload.writeRepeatingByte(0, count: repeats * 4)
    for _ in 0..<128 { payload.writeRepeatingByte(0, count: d * 4) }
    let frame = Frame(
      opcode: Opcode.partialAttention.rawValue, flags: [], requestID: 9, payload: payload
    ).serialized()
    let peer = try await RawPeer.connect(data)
    let before = try #require(child.residentBytes())
    let started = ContinuousClock.now
    try await peer.write(frame)
    // From the moment the whole frame is on the socket: what the node spends on it.
    let sent = ContinuousClock.now
    guard case .frame(let reply) = try await peer.nextFrame(timeout: .seconds(10)) else {
      Issue.record("the amplification frame was not answered")
      return
    }
    let elapsed = ContinuousClock.now - sent
    print("amplification frame: written in \(sent - started), refused \(elapsed) later")
    #expect(
      reply.decodedError()?.code == .invalidArgument, "\(String(describing: reply.decodedError()))")
    #expect(elapsed < .milliseconds(100), "refused after \(elapsed)")
    let after = try #require(child.residentBytes())
    #expect(after - before < 64 << 20, "resident memory grew by \(after - before) bytes")
    // The same node still answers real requests.
    let part = try await client.partialAttention(
      PartialAttentionRequest(
        shard: shard, mode: .exact, headDim: d, scale: 0.125,
        heads: [.exact(tokens: [0, 5, 9], query: [Float](repeating: 0.1, count: d))]))
    #expect(part.maxScores.count == 1)
    await peer.close()
    await client.close()
  }
}
