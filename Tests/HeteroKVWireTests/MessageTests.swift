import HeteroKVCore
import HeteroKVWire
import NIOCore
import Testing

@Suite("Data-plane messages")
struct MessageTests {
  let limits = DataPlaneLimits.standard
  let shard = ShardID(namespace: 3, sequence: 1 << 40, layer: 31, kvHead: 7, chunk: 12)

  func roundTrip<M: DataPlaneMessage & Equatable>(_ message: M) throws -> M {
    try M(payload: message.encoded(), limits: limits)
  }

  @Test("every message round-trips")
  func roundTrips() throws {
    let values = (0..<24).map { Float16(Float($0) * 0.25) }
    let put = PutRequest(
      shard: shard, startToken: 100, headDim: 8, values: values, keys: values.reversed())
    let decodedPut = try roundTrip(put)
    #expect(decodedPut == put)
    #expect(decodedPut.rowCount == 3)
    #expect(
      try roundTrip(PutResponse(shardRows: 9, usedBytes: 1 << 33, capacityBytes: 1 << 34)).shardRows
        == 9)
    for drop in [DropRequest.shard(shard), .sequence(5, namespace: 2), .namespace(8)] {
      #expect(try roundTrip(drop) == drop)
    }
    #expect(try roundTrip(DropResponse(shardsDropped: 4, bytesFreed: 65536)).bytesFreed == 65536)
    let gather = GatherRequest(shard: shard, tokens: [5, 1, 5, 4_000_000_000], includeKeys: true)
    #expect(try roundTrip(gather) == gather)
    var raw = ByteBuffer()
    raw.writeBytes([UInt8](repeating: 7, count: 32))
    let gathered = GatherResponse(rowCount: 2, headDim: 8, values: raw, keys: nil)
    #expect(try roundTrip(gathered) == gathered)
    let weighted = PartialAttentionRequest(
      shard: shard, mode: .weights, headDim: 64, scale: 0.125,
      heads: [
        .weighted(tokens: [1, 2], weights: [0.25, 0.75]), .weighted(tokens: [], weights: []),
      ])
    #expect(try roundTrip(weighted) == weighted)
    let exact = PartialAttentionRequest(
      shard: shard, mode: .exact, headDim: 4, scale: 0.5,
      heads: [.exact(tokens: [9], query: [1, 2, 3, 4])])
    #expect(try roundTrip(exact) == exact)
    // A head group naming the same tokens sends them once.
    let group = PartialAttentionRequest(
      shard: shard, mode: .exact, headDim: 4, scale: 0.5,
      heads: (0..<4).map { h in .exact(tokens: Array(0..<100), query: [Float(h), 1, 2, 3]) })
    #expect(try roundTrip(group) == group)
    var unshared = group
    unshared.heads[3].tokens[99] = 100
    #expect(try roundTrip(unshared) == unshared)
    #expect(group.encoded().readableBytes + 3 * (4 + 400) == unshared.encoded().readableBytes)
    let partial = PartialAttentionResponse(
      headDim: 2, maxScores: [1, -.infinity], sumExps: [2, 0], outputs: [1, 2, 0, 0])
    #expect(try roundTrip(partial) == partial)
    let stats = StatsResponse(
      capacityBytes: 1, usedBytes: 2, storedBytes: 3, shardCount: 4, sequenceCount: 5, rowCount: 6)
    #expect(try roundTrip(stats) == stats)
  }

  @Test(
    "the work estimate reads a request's header: exact for shared tokens, saturating on hostile values"
  )
  func partialAttentionWorkEstimate() throws {
    let request = PartialAttentionRequest(
      shard: ShardID(sequence: 3, layer: 1, kvHead: 2), mode: .exact, headDim: 64, scale: 0.125,
      heads: (0..<3).map { _ in
        .exact(tokens: Array(0..<500), query: [Float](repeating: 1, count: 64))
      })
    #expect(PartialAttentionRequest.estimatedWork(payload: request.encoded()) == 500 * 3 * 64)
    // Largest header values: shared count 2^32-1, 65535 heads of 65535 dims.
    var hostile = ByteBuffer()
    hostile.writeBytes([UInt8](repeating: 0, count: ShardID.encodedSize))
    hostile.writeInteger(UInt8(1))  // exact
    hostile.writeInteger(UInt8(1))  // shared tokens
    hostile.writeInteger(UInt16.max, endianness: .little)
    hostile.writeInteger(UInt16.max, endianness: .little)
    hostile.writeInteger(Float(1).bitPattern, endianness: .little)
    hostile.writeInteger(UInt32.max, endianness: .little)
    #expect(PartialAttentionRequest.estimatedWork(payload: hostile) == .max)
    #expect(PartialAttentionRequest.estimatedWork(payload: ByteBuffer(bytes: [1, 2, 3])) == nil)
  }

  @Test("counts larger than the payload are refused before any array is made")
  func lyingCounts() {
    var gather = ByteBuffer()
    GatherRequest(shard: shard, tokens: [1, 2]).encode(into: &gather)
    // Claim 2^32-1 tokens while carrying two.
    gather.setInteger(UInt32.max, at: ShardID.encodedSize + 2, endianness: .little)
    expect(.malformedFrame, containing: "tokens declares 4294967295") {
      _ = try GatherRequest(payload: gather, limits: limits)
    }
    var put = PutRequest(shard: shard, startToken: 0, headDim: 4, values: [1, 2, 3, 4]).encoded()
    put.setInteger(UInt32(1 << 30), at: ShardID.encodedSize + 4, endianness: .little)
    expect(.malformedFrame, containing: "values declares") {
      _ = try PutRequest(payload: put, limits: limits)
    }
  }

  @Test("truncated payloads, trailing bytes and bad fields get errors naming the field")
  func badFields() {
    let put = PutRequest(shard: shard, startToken: 0, headDim: 4, values: [1, 2, 3, 4]).encoded()
    expect(.malformedFrame, containing: "payload ends before shard.layer") {
      _ = try PutRequest(payload: put.getSlice(at: 0, length: 13)!, limits: limits)
    }
    var trailing = put
    trailing.writeInteger(UInt8(0))
    expect(.malformedFrame, containing: "1 unexpected bytes") {
      _ = try PutRequest(payload: trailing, limits: limits)
    }
    var zeroDim = put
    zeroDim.setInteger(UInt16(0), at: ShardID.encodedSize + 8, endianness: .little)
    expect(.invalidArgument, containing: "head dimension 0") {
      _ = try PutRequest(payload: zeroDim, limits: limits)
    }
    var flags = put
    flags.setInteger(UInt16(0x80), at: ShardID.encodedSize + 10, endianness: .little)
    expect(.invalidArgument, containing: "unknown flag bits") {
      _ = try PutRequest(payload: flags, limits: limits)
    }
    let nan = PartialAttentionRequest(
      shard: shard, mode: .weights, headDim: 4, scale: 1,
      heads: [.weighted(tokens: [0], weights: [.nan])])
    expect(.invalidArgument, containing: "non-finite weight") {
      _ = try PartialAttentionRequest(payload: nan.encoded(), limits: limits)
    }
    // Work is bounded before it is done: each row named once, in order; heads x tokens capped.
    let group = PartialAttentionRequest(
      shard: shard, mode: .exact, headDim: 4, scale: 0.5,
      heads: (0..<4).map { h in .exact(tokens: Array(0..<100), query: [Float(h), 1, 2, 3]) })
    var repeated = group
    repeated.heads[2].tokens[50] = 49
    expect(.invalidArgument, containing: "strictly ascending") {
      _ = try PartialAttentionRequest(payload: repeated.encoded(), limits: limits)
    }
    var capped = limits
    capped.maxAttentionCells = 399
    expect(.invalidArgument, containing: "query heads x tokens exceeds 399") {
      _ = try PartialAttentionRequest(payload: group.encoded(), limits: capped)
    }
    let tooMany = PartialAttentionRequest(
      shard: shard, mode: .weights, headDim: 4, scale: 1,
      heads: Array(repeating: .weighted(tokens: [], weights: []), count: 200))
    expect(.invalidArgument, containing: "200 query heads") {
      _ = try PartialAttentionRequest(payload: tooMany.encoded(), limits: limits)
    }
    var mode = PartialAttentionRequest(
      shard: shard, mode: .exact, headDim: 4, scale: 1,
      heads: [.exact(tokens: [], query: [1, 2, 3, 4])]
    ).encoded()
    mode.setInteger(UInt8(7), at: ShardID.encodedSize)
    expect(.invalidArgument, containing: "unknown mode 7") {
      _ = try PartialAttentionRequest(payload: mode, limits: limits)
    }
    var badFlags = PartialAttentionRequest(
      shard: shard, mode: .exact, headDim: 4, scale: 1,
      heads: [.exact(tokens: [], query: [1, 2, 3, 4])]
    ).encoded()
    badFlags.setInteger(UInt8(6), at: ShardID.encodedSize + 1)
    expect(.invalidArgument, containing: "unknown flag bits 0x6") {
      _ = try PartialAttentionRequest(payload: badFlags, limits: limits)
    }
    var scope = DropRequest.shard(shard).encoded()
    scope.setInteger(UInt8(9), at: 0)
    expect(.invalidArgument, containing: "unknown scope 9") {
      _ = try DropRequest(payload: scope, limits: limits)
    }
  }

  @Test("host:port parsing")
  func hostPort() {
    #expect(HostPort("127.0.0.1:7000") == HostPort(host: "127.0.0.1", port: 7000))
    #expect(HostPort("[::1]:9") == HostPort(host: "::1", port: 9))
    #expect(HostPort("[::1]:9")?.description == "[::1]:9")
    #expect(HostPort("node-a") == nil)
    #expect(HostPort("node-a:70000") == nil)
    #expect(HostPort(":80") == nil)
  }

  private func expect(
    _ code: HeteroKVError.Code, containing text: String,
    _ body: () throws -> Void
  ) {
    do {
      try body()
      Issue.record("expected \(code)")
    } catch {
      guard let error = error as? HeteroKVError else {
        Issue.record("unexpected error \(error)")
        return
      }
      #expect(error.code == code)
      #expect(error.message.contains(text), "message was: \(error.message)")
    }
  }
}
