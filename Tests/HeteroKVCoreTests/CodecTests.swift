import CHeteroKVKernels
import Testing

@testable import HeteroKVCore

@Suite struct CodecTests {
  let d = 64

  /// Keys with a few outlier channels, as real keys have.
  func outlierKeys(rows: Int, seed: UInt64) throws -> HalfMatrix {
    var values = randomFloats(rows * d, seed: seed)
    for t in 0..<rows { for c in [3, 17] { values[t * d + c] = values[t * d + c] * 0.5 + 15 } }
    return try HalfMatrix(values, cols: d)
  }

  @Test(arguments: [2, 4, 8])
  func scalarQuantizationErrorWithinHalfAStep(bits: Int) throws {
    let config = try ScalarQuantizerConfiguration(bits: bits, groupSize: 32, window: 16)
    var store = try ScalarQuantizedKeyStore(headDim: d, configuration: config)
    let keys = try outlierKeys(rows: 200, seed: 1)
    try store.append(keys.gather(Array(0..<77)))
    try store.append(keys.gather(Array(77..<200)))
    #expect(store.count == 200)
    #expect(store.groupCount == (200 - 16) / 32)
    for gi in 0..<store.groupCount {
      let group = store.group(gi)
      for t in 0..<32 {
        let index = gi * 32 + t
        let original = keys.row(index)
        let decoded = store.decodedKey(at: index)
        for c in 0..<d {
          let step = Float(group.scales[c])
          #expect(abs(decoded[c] - original[c]) <= step / 2 * 1.001 + 1e-6)
        }
      }
    }
    // Window rows are exact.
    #expect(store.decodedKey(at: 199) == keys.row(199))
  }

  @Test(arguments: [2, 4, 8])
  func scalarScoresMatchDotWithDecodedKeys(bits: Int) throws {
    let config = try ScalarQuantizerConfiguration(bits: bits, groupSize: 32, window: 8)
    var store = try ScalarQuantizedKeyStore(headDim: d, configuration: config)
    try store.append(try outlierKeys(rows: 150, seed: 2))
    let q = randomFloats(3 * d, seed: 3)
    let scores = try store.scores(queries: q, heads: 3, scale: 0.5)
    for h in 0..<3 {
      for j in stride(from: 0, to: 150, by: 7) {
        let expected = 0.5 * dot(Array(q[h * d..<(h + 1) * d]), store.decodedKey(at: j))
        #expect(abs(scores[h * 150 + j] - expected) < 1e-3 * max(1, abs(expected)))
      }
    }
  }

  @Test func rejectedAppendsLeaveStoresUnchanged() throws {
    let keys = try outlierKeys(rows: 100, seed: 9)
    var scalar = try ScalarQuantizedKeyStore(
      headDim: d, configuration: try ScalarQuantizerConfiguration(bits: 4, groupSize: 32, window: 8)
    )
    try scalar.append(keys)
    var bad = keys.row(0)
    bad[5] = .infinity
    let before = (0..<100).map { scalar.decodedKey(at: $0) }
    #expect(throws: HeteroKVError.self) { try scalar.append(try HalfMatrix(bad, cols: d)) }
    #expect(throws: HeteroKVError.self) {
      try scalar.append(try randomMatrix(rows: 1, cols: 32, seed: 1))
    }
    #expect(scalar.count == 100)
    #expect((0..<100).map { scalar.decodedKey(at: $0) } == before)

    var pq = ProductQuantizedKeyStore(codebook: try codebook(keys: keys, g: 16, c: 16))
    try pq.append(keys)
    let codes = pq.codes
    #expect(throws: HeteroKVError.self) { try pq.append(try HalfMatrix(bad, cols: d)) }
    #expect(pq.codes == codes)

    var cache = try CompressedHeadCache(positions: [1, 5, 9], keys: keys, values: keys)
    #expect(throws: HeteroKVError.self) {
      try cache.append(key: keys.row(0), value: [1, 2], position: 100)
    }
    #expect(throws: HeteroKVError.self) {
      try cache.append(key: bad, value: keys.row(0), position: 100)
    }
    #expect(throws: HeteroKVError.self) {
      try cache.append(key: keys.row(0), value: keys.row(0), position: 3)
    }
    #expect(cache.positions == [1, 5, 9] && cache.keys.rows == 3 && cache.values.rows == 3)
  }

  @Test func unsupportedBitWidthIsATypedError() {
    do {
      _ = try ScalarQuantizerConfiguration(bits: 3)
      Issue.record("3 bits accepted")
    } catch let e as HeteroKVError {
      #expect(e.code == .unsupportedConfiguration)
      #expect(e.message.contains("3"))
    } catch { Issue.record("wrong error \(error)") }
  }

  func codebook(keys: HalfMatrix, g: Int, c: Int) throws -> ProductCodebook {
    let config = try ProductQuantizerConfiguration(subvectors: g, centroids: c, iterations: 6)
    let version = CodebookVersion(
      geometry: "test", layer: 0, kvHead: 0, headDim: d, subvectors: g, centroids: c,
      calibration: .ownPrefill)
    return try ProductCodebook.train(keys: keys, configuration: config, version: version)
  }

  /// How far `store`'s scores for one head may fall from the decoded keys' dot products: float
  /// rounding for a float table; for a byte table (4-bit and blocked one-byte codes) half its
  /// step per sub-space, the step being the widest sub-space's range of centroid scores over 255.
  func scoreTolerance(_ store: ProductQuantizedKeyStore, query qh: [Float], scale: Float) -> Float {
    guard store.scoresFromByteTable else { return 0 }
    let book = store.codebook
    let (g, c) = (book.version.subvectors, book.version.centroids)
    let s = d / g
    var widest: Float = 0
    for i in 0..<g {
      let entries = (0..<c).map { m in
        (0..<s).reduce(Float(0)) { acc, t in
          acc + scale * qh[i * s + t] * Float(book.centroids[(i * c + m) * s + t])
        }
      }
      widest = max(widest, entries.max()! - entries.min()!)
    }
    return widest / 255 / 2 * Float(g)
  }

  @Test func productQuantizationErrorFallsAsCentroidsGrow() throws {
    let keys = try outlierKeys(rows: 2048, seed: 4)
    let q = randomFloats(4 * d, seed: 5)
    let exact = Kernels.scores(queries: q, heads: 4, keys: keys, scale: 1)
    var lastReconstruction = Float.infinity
    var lastScore = Float.infinity
    for c in [16, 64, 256] {
      var store = ProductQuantizedKeyStore(codebook: try codebook(keys: keys, g: 16, c: c))
      try store.append(keys)
      let decoded = (0..<keys.rows).flatMap { store.decodedKey(at: $0) }
      let reconstruction = relativeError(decoded, keys.floats())
      let scoreError = relativeError(try store.scores(queries: q, heads: 4, scale: 1), exact)
      #expect(reconstruction < lastReconstruction, "c=\(c)")
      #expect(scoreError < lastScore, "c=\(c)")
      lastReconstruction = reconstruction
      lastScore = scoreError
    }
  }

  @Test(
    "codes of a codebook of at most 256 centroids take a byte each, more take two; both score alike"
  )
  func productCodeWidths() throws {
    let keys = try outlierKeys(rows: 600, seed: 8)
    let q = randomFloats(4 * d, seed: 9)
    for (c, width) in [(256, 1), (512, 2)] {
      let book = try codebook(keys: keys, g: 16, c: c)
      var store = ProductQuantizedKeyStore(codebook: book)
      try store.append(keys)
      #expect(store.residentBytes - book.byteCount == 600 * 16 * width, "c=\(c)")
      // The same codes through the other constructor, and scores against decoded keys.
      let again = try ProductQuantizedKeyStore(codebook: book, codes: store.codes)
      #expect(again.codes == store.codes)
      let scores = try store.scores(queries: q, heads: 4, scale: 1)
      let tolerance = scoreTolerance(store, query: Array(q[0..<d]), scale: 1)
      for j in stride(from: 0, to: 600, by: 7) {
        let expected = dot(Array(q[0..<d]), store.decodedKey(at: j))
        #expect(
          abs(scores[j] - expected) < tolerance + 1e-3 * max(1, abs(expected)), "c=\(c) j=\(j)")
      }
    }
  }

  @Test(
    "16-centroid codes take four bits in 32-token blocks, append one at a time as in bulk, and score within the byte table's step"
  )
  func fourBitProductCodes() throws {
    let keys = try outlierKeys(rows: 77, seed: 18)
    for g in [32, 64] {
      let book = try codebook(keys: keys, g: g, c: 16)
      var bulk = ProductQuantizedKeyStore(codebook: book)
      try bulk.append(keys)
      var single = ProductQuantizedKeyStore(codebook: book)
      for j in 0..<keys.rows { try single.append(keys.gather([j])) }
      #expect(bulk.count == 77 && single.count == 77)
      #expect(single.codes == bulk.codes)
      // Three whole blocks of 32 tokens, g / 2 bytes a token.
      #expect(bulk.residentBytes - book.byteCount == 3 * 32 * g / 2, "g=\(g)")
      let again = try ProductQuantizedKeyStore(codebook: book, codes: bulk.codes)
      #expect(again.codes == bulk.codes)
      #expect(again.decodedKey(at: 40) == bulk.decodedKey(at: 40))
      for heads in [1, 3, 5] {
        let q = randomFloats(heads * d, seed: 19)
        let scores = try bulk.scores(queries: q, heads: heads, scale: 0.25)
        #expect(try single.scores(queries: q, heads: heads, scale: 0.25) == scores)
        #expect(bulk.scoresFromByteTable)
        for h in 0..<heads {
          let qh = Array(q[h * d..<(h + 1) * d])
          let tolerance = scoreTolerance(bulk, query: qh, scale: 0.25)
          for j in 0..<77 {
            let expected = 0.25 * dot(qh, bulk.decodedKey(at: j))
            #expect(
              abs(scores[h * 77 + j] - expected) <= tolerance + 1e-3, "g=\(g) h=\(h) j=\(j)")
          }
        }
      }
    }
  }

  @Test(
    "one-byte codes append one at a time as in bulk across 64-token blocks, count only the bytes their tokens fill, and score within their table's step"
  )
  func oneByteProductCodesInBlocks() throws {
    let keys = try outlierKeys(rows: 141, seed: 28)
    for g in [16, 32] {
      let book = try codebook(keys: keys, g: g, c: 256)
      var bulk = ProductQuantizedKeyStore(codebook: book)
      try bulk.append(keys)
      var single = ProductQuantizedKeyStore(codebook: book)
      for j in 0..<keys.rows { try single.append(keys.gather([j])) }
      #expect(single.codes == bulk.codes)
      // Byte tables exactly where the kernels look them up in registers.
      #expect(bulk.scoresFromByteTable == (hkv_pq8_lookups_in_registers() != 0))
      #expect(bulk.residentBytes - book.byteCount == 141 * g, "g=\(g)")
      let again = try ProductQuantizedKeyStore(codebook: book, codes: bulk.codes)
      #expect(again.codes == bulk.codes)
      for j in [0, 63, 64, 100, 140] {
        #expect(again.decodedKey(at: j) == bulk.decodedKey(at: j))
        let code = bulk.codes[j * g..<(j + 1) * g].map { $0 }
        #expect(bulk.decodedKey(at: j) == book.decode(code[...]), "g=\(g) j=\(j)")
      }
      for heads in [1, 3, 5] {
        let q = randomFloats(heads * d, seed: 29)
        let scores = try bulk.scores(queries: q, heads: heads, scale: 0.25)
        #expect(try single.scores(queries: q, heads: heads, scale: 0.25) == scores)
        for h in 0..<heads {
          let qh = Array(q[h * d..<(h + 1) * d])
          let tolerance = scoreTolerance(bulk, query: qh, scale: 0.25)
          for j in 0..<141 {
            let expected = 0.25 * dot(qh, bulk.decodedKey(at: j))
            #expect(
              abs(scores[h * 141 + j] - expected) <= tolerance + 1e-3, "g=\(g) h=\(h) j=\(j)")
          }
        }
      }
    }
  }

  @Test func productScoresMatchDotWithDecodedKeys() throws {
    let keys = try outlierKeys(rows: 500, seed: 6)
    var store = ProductQuantizedKeyStore(codebook: try codebook(keys: keys, g: 32, c: 64))
    try store.append(keys)
    #expect(store.count == 500)
    for heads in [1, 3, 4, 6] {
      let q = randomFloats(heads * d, seed: 7)
      let scores = try store.scores(queries: q, heads: heads, scale: 0.25)
      for h in 0..<heads {
        let qh = Array(q[h * d..<(h + 1) * d])
        let tolerance = scoreTolerance(store, query: qh, scale: 0.25)
        for j in stride(from: 0, to: 500, by: 11) {
          let expected = 0.25 * dot(qh, store.decodedKey(at: j))
          #expect(abs(scores[h * 500 + j] - expected) < tolerance + 1e-3 * max(1, abs(expected)))
        }
      }
    }
  }

  @Test(
    "each key's code names its nearest centroid in every sub-space, coded alone or with others",
    arguments: [(16, 256), (32, 16), (32, 256), (8, 1024)])
  func codesNameTheNearestCentroid(g: Int, c: Int) throws {
    let keys = try outlierKeys(rows: 300, seed: 12)
    let book = try codebook(keys: keys, g: g, c: c)
    let s = d / g
    let bulk = try book.encode(keys)
    let points = keys.floats()
    for j in stride(from: 0, to: keys.rows, by: 13) {
      // A decode step codes one key at a time: the same codes as the prefill's batch.
      let alone = try book.encode(keys.gather([j]))
      #expect(alone == Array(bulk[j * g..<(j + 1) * g]), "key \(j)")
      for i in 0..<g {
        let p = points[(j * d + i * s)..<(j * d + (i + 1) * s)]
        func distance(_ m: Int) -> Float {
          zip(p, book.centroids[((i * c + m) * s)..<((i * c + m + 1) * s)]).reduce(0) {
            $0 + ($1.0 - Float($1.1)) * ($1.0 - Float($1.1))
          }
        }
        let best = (0..<c).map(distance).min()!
        // Ties and rounding: the kernel expands |p - c|^2, so allow float noise.
        #expect(distance(Int(bulk[j * g + i])) <= best + 1e-4 * max(1, best), "key \(j) sub \(i)")
      }
    }
  }

  @Test func productQuantizationRejectsBadShapes() throws {
    let keys = try randomMatrix(rows: 10, cols: d, seed: 8)
    #expect(throws: HeteroKVError.self) { try codebook(keys: keys, g: 7, c: 8) }
    #expect(throws: HeteroKVError.self) { try ProductQuantizerConfiguration(centroids: 70000) }
    let book = try codebook(keys: keys, g: 8, c: 8)
    #expect(throws: HeteroKVError.self) {
      try book.encode(try randomMatrix(rows: 2, cols: 32, seed: 1))
    }
  }
}
