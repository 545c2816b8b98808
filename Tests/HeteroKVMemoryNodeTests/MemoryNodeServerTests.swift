import Foundation
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVMemoryNode
import HeteroKVTransport
import HeteroKVWire
import Testing

/// Attention computed directly from fp16 rows in double precision: the reference.
func referenceAttention(
  query: [Float], keys: [Float16], values: [Float16], rows: [Int], d: Int, scale: Float
) -> [Float] {
  let scores = rows.map { r in
    (0..<d).reduce(0.0) { $0 + Double(query[$1]) * Double(Float(keys[r * d + $1])) } * Double(scale)
  }
  let m = scores.max() ?? 0
  let e = scores.map { exp($0 - m) }
  let total = e.reduce(0, +)
  return (0..<d).map { c in
    Float(zip(rows, e).reduce(0.0) { $0 + $1.1 * Double(Float(values[$1.0 * d + c])) } / total)
  }
}

func relativeError(_ a: [Float], _ b: [Float]) -> Float {
  let num = zip(a, b).reduce(Float(0)) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
  let den = b.reduce(Float(0)) { $0 + $1 * $1 }
  return (num / max(den, 1e-30)).squareRoot()
}

@Suite("Memory node over loopback TCP")
struct MemoryNodeServerTests {
  @Test("put and gather round-trip through the client; stats agree")
  func putGather() async throws {
    try await withRunningNodes([nodeConfiguration("m0")]) { nodes in
      let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
      defer { Task { await client.close() } }
      var random = TestRandom(state: 11)
      let d = 128
      let shard = ShardID(namespace: 1, sequence: 77, layer: 3, kvHead: 5, chunk: 0)
      let values = random.halves(3000 * d)
      for start in stride(from: 0, to: 3000, by: 1000) {
        let response = try await client.put(
          PutRequest(
            shard: shard, startToken: UInt32(start), headDim: d,
            values: Array(values[start * d..<(start + 1000) * d])))
        #expect(response.shardRows == UInt32(start + 1000))
      }
      let tokens = (0..<2048).map { _ in UInt32(random.int(3000)) }
      let gathered = try await client.gather(GatherRequest(shard: shard, tokens: tokens))
      #expect(gathered.rowCount == 2048 && gathered.headDim == d)
      let got = gathered.valueArray
      for (i, t) in tokens.enumerated() {
        #expect(got[i * d..<(i + 1) * d].elementsEqual(values[Int(t) * d..<(Int(t) + 1) * d]))
      }
      let stats = try await client.stats()
      #expect(stats.rowCount == 3000 && stats.shardCount == 1 && stats.sequenceCount == 1)
      #expect(stats.storedBytes == UInt64(3000 * d * 2))
      try await client.ping()
    }
  }

  @Test(
    "a started fan-out answers in request order, sends later what had no connection, fails over"
  )
  func startedFanOut() async throws {
    try await withRunningNodes([nodeConfiguration("a"), nodeConfiguration("b")]) { nodes in
      let tier = MemoryTierClient(endpoints: nodes.map(\.endpoint))
      defer { Task { await tier.close() } }
      var random = TestRandom(state: 21)
      let d = 64
      let tokens = 512
      let keys = random.halves(tokens * d)
      let values = random.halves(tokens * d)
      let onBoth = ShardID(sequence: 4, layer: 1, kvHead: 0, chunk: 0)
      let onB = ShardID(sequence: 4, layer: 1, kvHead: 1, chunk: 0)
      for (node, shard) in [("a", onBoth), ("b", onBoth), ("b", onB)] {
        _ = try await tier.node(node).put(
          PutRequest(shard: shard, startToken: 0, headDim: d, values: values, keys: keys))
      }
      let scale = 1 / Float(d).squareRoot()
      let query = (0..<d).map { _ in random.float() * 2 }
      func request(_ shard: ShardID, _ rows: [Int]) -> PartialAttentionRequest {
        PartialAttentionRequest(
          shard: shard, mode: .exact, headDim: d, scale: scale,
          heads: [.exact(tokens: rows.map(UInt32.init), query: query)])
      }
      let rows = [Array(0..<100), Array(150..<400), Array(stride(from: 1, to: 512, by: 3))]
      // Only node a has a connection when the fan-out starts: the first request is sent to a,
      // the second too (a lacks its shard: answered by b, one failover), and the third, whose
      // one holder has no connection yet, is sent when the answer is read.
      try await tier.node("a").ping()
      let fanOut = tier.startPartialAttention([
        ReplicatedRequest(request(onBoth, rows[0]), holders: ["a", "b"]),
        ReplicatedRequest(request(onB, rows[1]), holders: ["a", "b"]),
        ReplicatedRequest(request(onB, rows[2]), holders: ["b"]),
      ])
      let answer = try await fanOut.answer()
      #expect(answer.failovers == 1)
      #expect(answer.partials.count == 3)
      for (partial, chosen) in zip(answer.partials, rows) {
        let expected = referenceAttention(
          query: query, keys: keys, values: values, rows: chosen, d: d, scale: scale)
        #expect(relativeError(Array(partial.output(head: 0)), expected) < 1e-4)
      }
      // A refusal that another holder would repeat is thrown as the node raised it.
      let wrongWidth = PartialAttentionRequest(
        shard: onBoth, mode: .exact, headDim: 32, scale: scale,
        heads: [.exact(tokens: [1, 2], query: Array(query.prefix(32)))])
      var refusal: HeteroKVError?
      do throws(HeteroKVError) {
        _ = try await tier.startPartialAttention([
          ReplicatedRequest(wrongWidth, holders: ["a", "b"])
        ]).answer()
      } catch {
        refusal = error
      }
      #expect(refusal?.code == .dimensionMismatch)
      #expect(refusal?.message.contains("node a") == true)
    }
  }

  @Test("partial attention from two nodes merges to full attention over the union (1e-4)")
  func mergedPartialAttention() async throws {
    try await withRunningNodes([nodeConfiguration("a"), nodeConfiguration("b")]) { nodes in
      let tier = MemoryTierClient(endpoints: nodes.map(\.endpoint))
      defer { Task { await tier.close() } }
      var random = TestRandom(state: 5)
      let d = 128
      let tokens = 4096
      let half = tokens / 2
      let keys = random.halves(tokens * d)
      let values = random.halves(tokens * d)
      // Tokens 0..<2048 live on node a (chunk 0), 2048..<4096 on node b (chunk 1).
      let shards = [
        ShardID(sequence: 9, layer: 0, kvHead: 2, chunk: 0),
        ShardID(sequence: 9, layer: 0, kvHead: 2, chunk: 1),
      ]
      for (i, node) in ["a", "b"].enumerated() {
        let range = i * half * d..<(i + 1) * half * d
        _ = try await tier.node(node).put(
          PutRequest(
            shard: shards[i], startToken: UInt32(i * half), headDim: d,
            values: Array(values[range]), keys: Array(keys[range])))
      }
      let heads = 4
      let queries = (0..<heads).map { _ in (0..<d).map { _ in random.float() * 2 } }
      let chosen = (0..<heads).map { _ in Set((0..<600).map { _ in random.int(tokens) }).sorted() }
      let scale = 1 / Float(d).squareRoot()

      // Exact mode: the nodes re-score with their keys.
      var requests: [(node: String, request: PartialAttentionRequest)] = []
      for (i, node) in ["a", "b"].enumerated() {
        let owned = i * half..<(i + 1) * half
        requests.append(
          (
            node,
            PartialAttentionRequest(
              shard: shards[i], mode: .exact, headDim: d, scale: scale,
              heads: (0..<heads).map { h in
                .exact(tokens: chosen[h].filter(owned.contains).map(UInt32.init), query: queries[h])
              })
          ))
      }
      let merged = try await tier.mergedAttention(requests)
      for h in 0..<heads {
        let expected = referenceAttention(
          query: queries[h], keys: keys, values: values, rows: chosen[h], d: d, scale: scale)
        #expect(relativeError(Array(merged.output(head: h)), expected) < 1e-4)
      }

      // Exact mode with one token set for the whole group (the union, as a worker sends it):
      // the node reads each row once for all heads.
      let union = Array(Set(chosen.joined())).sorted()
      let shared = try await tier.mergedAttention(
        ["a", "b"].enumerated().map { i, node in
          let owned = i * half..<(i + 1) * half
          let tokens = union.filter(owned.contains).map(UInt32.init)
          return (
            node,
            PartialAttentionRequest(
              shard: shards[i], mode: .exact, headDim: d, scale: scale,
              heads: (0..<heads).map { h in .exact(tokens: tokens, query: queries[h]) })
          )
        })
      for h in 0..<heads {
        let expected = referenceAttention(
          query: queries[h], keys: keys, values: values, rows: union, d: d, scale: scale)
        #expect(relativeError(Array(shared.output(head: h)), expected) < 1e-4)
      }

      // Weights mode: the worker's softmax weights over the union, split by owner.
      var weighted: [(node: String, request: PartialAttentionRequest)] = []
      var expectedWeighted: [[Float]] = []
      var weightsPerHead: [[Float]] = []
      for h in 0..<heads {
        let w = chosen[h].map { _ in abs(random.float()) + 0.01 }
        let total = w.reduce(0, +)
        weightsPerHead.append(w.map { $0 / total })
        expectedWeighted.append(
          (0..<d).map { c in
            zip(chosen[h], weightsPerHead[h]).reduce(Float(0)) {
              $0 + $1.1 * Float(values[$1.0 * d + c])
            }
          })
      }
      for (i, node) in ["a", "b"].enumerated() {
        let owned = i * half..<(i + 1) * half
        weighted.append(
          (
            node,
            PartialAttentionRequest(
              shard: shards[i], mode: .weights, headDim: d, scale: 1,
              heads: (0..<heads).map { h in
                let picks = chosen[h].indices.filter { owned.contains(chosen[h][$0]) }
                return .weighted(
                  tokens: picks.map { UInt32(chosen[h][$0]) },
                  weights: picks.map { weightsPerHead[h][$0] })
              })
          ))
      }
      let mergedWeighted = try await tier.mergedAttention(weighted)
      for h in 0..<heads {
        #expect(relativeError(Array(mergedWeighted.output(head: h)), expectedWeighted[h]) < 1e-4)
        #expect(abs(mergedWeighted.sumExps[h] - 1) < 1e-4)
      }
    }
  }

  @Test("errors are typed: unknown sequence and shard, index out of range, capacity, dimension")
  func typedErrors() async throws {
    try await withRunningNodes([nodeConfiguration("m", capacity: 8 * 4096, pageBytes: 4096)]) {
      nodes in
      let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
      defer { Task { await client.close() } }
      let shard = ShardID(sequence: 1, layer: 0, kvHead: 0)
      let values = [Float16](repeating: 0.5, count: 100 * 64)
      _ = try await client.put(PutRequest(shard: shard, startToken: 0, headDim: 64, values: values))
      await expectDataPlaneError(.unknownSequence) {
        _ = try await client.gather(
          GatherRequest(shard: ShardID(sequence: 2, layer: 0, kvHead: 0), tokens: [0]))
      }
      await expectDataPlaneError(.unknownShard) {
        _ = try await client.gather(
          GatherRequest(shard: ShardID(sequence: 1, layer: 1, kvHead: 0), tokens: [0]))
      }
      let outOfRange = await expectDataPlaneError(.indexOutOfRange) {
        _ = try await client.gather(GatherRequest(shard: shard, tokens: [3, 100]))
      }
      #expect(outOfRange?.message.contains("token 100 is outside") == true)
      #expect(outOfRange?.message.contains("node m") == true)
      await expectDataPlaneError(.dimensionMismatch) {
        _ = try await client.partialAttention(
          PartialAttentionRequest(
            shard: shard, mode: .weights, headDim: 32, scale: 1,
            heads: [.weighted(tokens: [0], weights: [1])]))
      }
      await expectDataPlaneError(.invalidArgument) {
        _ = try await client.partialAttention(
          PartialAttentionRequest(
            shard: shard, mode: .exact, headDim: 64, scale: 1,
            heads: [.exact(tokens: [0], query: .init(repeating: 1, count: 64))]))
      }
      // 8 pages of 32 rows: 100 rows hold 4; 200 more rows need 7 more.
      await expectDataPlaneError(.resourceExhausted) {
        _ = try await client.put(
          PutRequest(
            shard: shard, startToken: 100, headDim: 64, values: .init(repeating: 1, count: 200 * 64)
          ))
      }
      let stats = try await client.stats()
      #expect(stats.rowCount == 100)
      let back = try await client.gather(GatherRequest(shard: shard, tokens: Array(0..<100)))
      #expect(back.valueArray == values)
    }
  }

  @Test("many concurrent clients, each on its own shards, see only their own rows")
  func concurrentClients() async throws {
    try await withRunningNodes([nodeConfiguration("c")]) { nodes in
      let endpoint = nodes[0].endpoint
      try await withThrowingTaskGroup(of: Void.self) { group in
        for c in 0..<8 {
          group.addTask {
            let client = MemoryNodeClient(endpoint: endpoint, connections: 2)
            var random = TestRandom(state: UInt64(100 + c))
            let shard = ShardID(sequence: UInt64(c), layer: 0, kvHead: 0)
            var stored: [Float16] = []
            for batch in 0..<10 {
              let v = random.halves(50 * 64)
              _ = try await client.put(
                PutRequest(shard: shard, startToken: UInt32(batch * 50), headDim: 64, values: v))
              stored += v
              let tokens = (0..<64).map { _ in UInt32(random.int(stored.count / 64)) }
              async let a = client.gather(GatherRequest(shard: shard, tokens: tokens))
              async let b = client.gather(GatherRequest(shard: shard, tokens: tokens.reversed()))
              let (ra, rb) = try await (a, b)
              let va = ra.valueArray
              let vb = rb.valueArray
              for (i, t) in tokens.enumerated() {
                let row = stored[Int(t) * 64..<(Int(t) + 1) * 64]
                #expect(va[i * 64..<(i + 1) * 64].elementsEqual(row))
                #expect(vb[(63 - i) * 64..<(64 - i) * 64].elementsEqual(row))
              }
            }
            await client.close()
          }
        }
        try await group.waitForAll()
      }
      let stats = try await MemoryNodeClient(endpoint: endpoint).stats()
      #expect(stats.shardCount == 8 && stats.rowCount == 8 * 500)
    }
  }

  @Test(
    "a deadline that passes fails the request with deadlineExceeded; an absent node is unreachable")
  func deadlinesAndUnreachable() async throws {
    // Nothing listens on a port we just closed.
    let closed = try await withRunningNodes([nodeConfiguration("gone")]) { nodes in
      nodes[0].addresses.data
    }
    let client = MemoryNodeClient(
      endpoint: MemoryNodeEndpoint(id: "gone", data: closed), defaultTimeout: .seconds(2))
    let error = await expectDataPlaneError(.unavailable) { try await client.ping() }
    #expect(error?.message.contains("gone") == true)

    try await withRunningNodes([nodeConfiguration("slow")]) { nodes in
      let client = MemoryNodeClient(endpoint: nodes[0].endpoint)
      let shard = ShardID(sequence: 1, layer: 0, kvHead: 0)
      _ = try await client.put(
        PutRequest(
          shard: shard, startToken: 0, headDim: 128,
          values: .init(repeating: 1, count: 128 * 20_000)))
      // A request that cannot finish in a nanosecond.
      await expectDataPlaneError(.deadlineExceeded) {
        _ = try await client.gather(
          GatherRequest(shard: shard, tokens: Array(0..<20_000)), timeout: .nanoseconds(1))
      }
      try await client.ping()
      await client.close()
    }
  }
}
