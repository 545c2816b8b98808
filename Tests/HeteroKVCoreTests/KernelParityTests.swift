import Testing

@testable import HeteroKVCore

/// The portable C kernels must agree with the vectorized ones: CI machines without AVX2 run
/// only the portable path. Serialized so that forcing the portable path does not race.
@Suite(.serialized) struct KernelParityTests {
  func bothPaths<T>(_ body: () throws -> T) rethrows -> (vector: T, portable: T) {
    let v = try body()
    let p = try Kernels.withPortableKernels(body)
    return (v, p)
  }

  @Test func everyKernelAgreesWithItsPortableVersion() throws {
    let d = 128
    let n = 203
    let keys = try randomMatrix(rows: n, cols: d, seed: 1)
    let values = try randomMatrix(rows: n, cols: d, seed: 2)
    let q = randomFloats(4 * d, seed: 3)

    let conversions = bothPaths { Kernels.toHalf(randomFloats(1001, seed: 4, scale: 100)) }
    #expect(conversions.vector == conversions.portable)

    let scores = bothPaths { Kernels.scores(queries: q, heads: 4, keys: keys, scale: 0.3) }
    #expect(relativeError(scores.portable, scores.vector) < 1e-5)

    let full = try bothPaths {
      try FullAttention.attend(queries: q, heads: 4, keys: keys, values: values)
    }
    #expect(relativeError(full.portable.outputs, full.vector.outputs) < 1e-5)

    let sel = try bothPaths {
      try TauMassSelection.select(scores: Array(scores.vector[0..<n])[...], tau: 0.9)
    }
    #expect(sel.vector.indices == sel.portable.indices)

    let step = try HCAttentionStep()
    let sparse = try bothPaths {
      try step.contextVectors(
        selections: try step.select(approximateScores: scores.vector, heads: 4), queries: q,
        keys: nil, values: values)
    }
    #expect(relativeError(sparse.portable.outputs, sparse.vector.outputs) < 1e-5)

    for bits in [2, 4, 8] {
      let config = try ScalarQuantizerConfiguration(bits: bits, groupSize: 32, window: 8)
      var store = try ScalarQuantizedKeyStore(headDim: d, configuration: config)
      try store.append(keys)
      let s = try bothPaths { try store.scores(queries: q, heads: 4, scale: 0.5) }
      // 4 bits use an int16 query on the vector path: 1 part in 32767 of the largest channel.
      #expect(relativeError(s.portable, s.vector) < 1e-4, "bits \(bits)")
    }

    let version = CodebookVersion(
      geometry: "t", layer: 0, kvHead: 0, headDim: d, subvectors: 32, centroids: 64,
      calibration: .ownPrefill)
    let book = try ProductCodebook.train(
      keys: keys, configuration: try ProductQuantizerConfiguration(subvectors: 32, centroids: 64),
      version: version)
    let codes = try bothPaths { try book.encode(keys) }
    #expect(codes.vector == codes.portable)
    let store = try ProductQuantizedKeyStore(codebook: book, codes: codes.vector)
    let pq = try bothPaths { try store.scores(queries: q, heads: 4, scale: 0.5) }
    #expect(relativeError(pq.portable, pq.vector) < 1e-5)
  }
}
