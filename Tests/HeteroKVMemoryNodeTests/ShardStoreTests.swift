import HeteroKVCore
import HeteroKVMemoryNode
import HeteroKVWire
import NIOCore
import Testing

@Suite("Page pool and shard store")
struct ShardStoreTests {
  let shard = ShardID(sequence: 1, layer: 0, kvHead: 0)

  @Test("the pool hands out whole batches or nothing, and reuses freed pages")
  func pool() throws {
    let pool = PagePool(capacityBytes: 10 * 4096, pageBytes: 4096)
    #expect(pool.maxPages == 10)
    let a = try #require(pool.allocate(7))
    #expect(pool.allocate(4) == nil)
    #expect(pool.pagesInUse == 7)
    let b = try #require(pool.allocate(3))
    #expect(pool.usedBytes == 10 * 4096)
    pool.release(a)
    let c = try #require(pool.allocate(7))
    #expect(Set(c) == Set(a))
    pool.release(b + c)
    #expect(pool.pagesInUse == 0)
  }

  @Test("rows spanning many pages come back exactly, in request order, with keys")
  func putGather() throws {
    let store = ShardStore(pool: PagePool(capacityBytes: 1 << 20, pageBytes: 4096))
    var random = TestRandom(state: 1)
    let d = 64  // 128-byte rows, 32 per page
    var values: [Float16] = []
    var keys: [Float16] = []
    var start: UInt32 = 500
    for batch in [1, 31, 70, 3] {
      let v = random.halves(batch * d)
      let k = random.halves(batch * d)
      let response = try store.put(
        PutRequest(shard: shard, startToken: start, headDim: d, values: v, keys: k))
      values += v
      keys += k
      start += UInt32(batch)
      #expect(response.shardRows == UInt32(values.count / d))
    }
    let rows = values.count / d
    let tokens: [UInt32] = [500, UInt32(500 + rows - 1), 532, 531, 500, 580]
    let payload = try store.gather(
      GatherRequest(shard: shard, tokens: tokens, includeKeys: true),
      allocator: ByteBufferAllocator())
    let response = try GatherResponse(payload: payload, limits: .standard)
    let gotValues = response.valueArray
    let gotKeys = try #require(response.keyArray)
    for (i, t) in tokens.enumerated() {
      let r = Int(t) - 500
      #expect(Array(gotValues[i * d..<(i + 1) * d]) == Array(values[r * d..<(r + 1) * d]))
      #expect(Array(gotKeys[i * d..<(i + 1) * d]) == Array(keys[r * d..<(r + 1) * d]))
    }
    let stats = store.stats()
    #expect(stats.rowCount == UInt64(rows))
    #expect(stats.storedBytes == UInt64(rows * d * 2 * 2))
    #expect(stats.usedBytes == UInt64(2 * ((rows + 31) / 32) * 4096))
  }

  @Test("a batch that does not fit fails with a capacity error and changes nothing")
  func capacityIsAtomic() throws {
    let store = ShardStore(pool: PagePool(capacityBytes: 4 * 4096, pageBytes: 4096))
    let d = 64
    var random = TestRandom(state: 2)
    let first = random.halves(40 * d)  // 2 pages
    _ = try store.put(PutRequest(shard: shard, startToken: 0, headDim: d, values: first))
    let before = store.stats()
    // A new shard of 40 rows with keys needs 2 + 2 pages; only 2 of the 4 are free.
    let other = ShardID(sequence: 2, layer: 0, kvHead: 0)
    do {
      _ = try store.put(
        PutRequest(
          shard: other, startToken: 0, headDim: d, values: random.halves(40 * d),
          keys: random.halves(40 * d)))
      Issue.record("expected capacity exhaustion")
    } catch {
      #expect(error.code == .resourceExhausted)
      #expect(error.message.contains("need 4 more pages"))
    }
    #expect(store.stats() == before)
    #expect(store.summaries(sequence: 2).isEmpty)
    let payload = try store.gather(
      GatherRequest(shard: shard, tokens: Array(0..<40)), allocator: ByteBufferAllocator())
    #expect(try GatherResponse(payload: payload, limits: .standard).valueArray == first)
  }

  @Test("appends must be contiguous and agree with the shard's shape")
  func appendRules() throws {
    let store = ShardStore(pool: PagePool(capacityBytes: 1 << 20, pageBytes: 4096))
    _ = try store.put(
      PutRequest(shard: shard, startToken: 10, headDim: 8, values: .init(repeating: 1, count: 16)))
    let cases: [(PutRequest, HeteroKVError.Code, String)] = [
      (
        PutRequest(shard: shard, startToken: 13, headDim: 8, values: .init(repeating: 1, count: 8)),
        .invalidArgument, "must start at 12"
      ),
      (
        PutRequest(shard: shard, startToken: 10, headDim: 8, values: .init(repeating: 1, count: 8)),
        .invalidArgument, "must start at 12"
      ),
      (
        PutRequest(
          shard: shard, startToken: 12, headDim: 16, values: .init(repeating: 1, count: 16)),
        .dimensionMismatch, "head dimension 8"
      ),
      (
        PutRequest(
          shard: shard, startToken: 12, headDim: 8, values: .init(repeating: 1, count: 8),
          keys: .init(repeating: 1, count: 8)), .dimensionMismatch, "does not store keys"
      ),
    ]
    for (request, code, text) in cases {
      do {
        _ = try store.put(request)
        Issue.record("expected \(code)")
      } catch {
        #expect(error.code == code)
        #expect(error.message.contains(text), "\(error.message)")
        // A writer reads the shard's end back from a misplaced start (and nothing else).
        let misplaced = text == "must start at 12"
        #expect(PutRequest.expectedStart(inRefusal: error) == (misplaced ? 12 : nil))
      }
    }
    #expect(store.stats().rowCount == 2)
  }

  @Test("drops free pages and name what is unknown")
  func drops() throws {
    let pool = PagePool(capacityBytes: 1 << 20, pageBytes: 4096)
    let store = ShardStore(pool: pool)
    for seq in 1...3 {
      for head in 0..<2 {
        _ = try store.put(
          PutRequest(
            shard: ShardID(
              namespace: seq == 3 ? 9 : 0, sequence: UInt64(seq), layer: 0, kvHead: UInt16(head)),
            startToken: 0, headDim: 8, values: .init(repeating: 1, count: 8)))
      }
    }
    #expect(pool.pagesInUse == 6)
    let one = try store.drop(.shard(ShardID(sequence: 1, layer: 0, kvHead: 1)))
    #expect(one.shardsDropped == 1 && one.bytesFreed == 4096)
    #expect(try store.drop(.sequence(2)).shardsDropped == 2)
    #expect(try store.drop(.namespace(9)).shardsDropped == 2)
    #expect(pool.pagesInUse == 1)
    do {
      _ = try store.drop(.sequence(2))
      Issue.record("expected unknown sequence")
    } catch { #expect(error.code == .unknownSequence) }
    do {
      _ = try store.drop(.shard(ShardID(sequence: 1, layer: 0, kvHead: 1)))
      Issue.record("expected unknown shard")
    } catch { #expect(error.code == .unknownShard) }
  }
}
