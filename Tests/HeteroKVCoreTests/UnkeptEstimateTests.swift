import Foundation
import HeteroKVCore
import Testing

@Suite("The unkept-token estimate")
struct UnkeptEstimateTests {
  /// Keys, values whose rows share an offset (as real values do), and two query heads: one
  /// peaked on a few keys, one diffuse.
  struct Scene {
    var n: Int { 2048 }
    var d: Int { 32 }
    let keys: HalfMatrix
    let values: HalfMatrix
    let queries: [Float]

    init() throws {
      let n = 2048
      let d = 32
      keys = try randomMatrix(rows: n, cols: d, seed: 3)
      var v = randomFloats(n * d, seed: 4, scale: 0.25)
      for j in 0..<n { for c in 0..<d { v[j * d + c] += c % 2 == 0 ? 1 : -0.5 } }
      values = try HalfMatrix(v, cols: d)
      let k = keys.floats()
      let peaked = (0..<d).map { c in 0.9 * (k[7 * d + c] + k[1500 * d + c]) }
      let diffuse = randomFloats(d, seed: 5, scale: 0.4)
      queries = peaked + diffuse
    }
  }

  @Test(
    "its weight is the unkept share of the approximate mass, and merged with the kept tokens' exact attention it lands nearer full attention than they do alone"
  )
  func estimateMergesTowardFullAttention() throws {
    let s = try Scene()
    let scale = FullAttention.scale(headDim: s.d)
    let scores = Kernels.scores(queries: s.queries, heads: 2, keys: s.keys, scale: scale)
    let step = try HCAttentionStep(tau: 0.8, mode: .exact)
    let picked = try step.select(approximateScores: scores, heads: 2)
    let kept = try step.contextVectors(
      selections: picked, queries: s.queries, keys: s.keys, values: s.values)
    var estimate = UnkeptTokenEstimate(headDim: s.d)
    estimate.add(s.values.gather(Array(0..<1000)))
    estimate.add(s.values.gather(Array(1000..<s.n)))
    #expect(estimate.count == s.n)
    let tail = estimate.partial(scores: scores, selections: picked, attended: picked.map(\.indices))
    let full = try FullAttention.attend(
      queries: s.queries, heads: 2, keys: s.keys, values: s.values)
    for h in 0..<2 {
      // Σ exp(score) over the unkept tokens, against the whole context's.
      let whole = tail.maxScores[h] - picked[h].logNormalizer
      #expect(abs(Foundation.exp(whole) - (1 - picked[h].keptMass)) < 1e-4)
    }
    let merged = try AttentionPartial.merge([kept, tail])
    for h in 0..<2 {
      let alone = relativeError(Array(kept.output(head: h)), Array(full.output(head: h)))
      let withTail = relativeError(Array(merged.output(head: h)), Array(full.output(head: h)))
      #expect(alone > 0.003, "head \(h): kept alone errs \(alone)")
      #expect(withTail < 0.75 * alone, "head \(h): \(withTail) with the estimate, \(alone) without")
    }
  }

  @Test("a head that attends every token gets no tail, and merging it changes nothing")
  func nothingUnkept() throws {
    let s = try Scene()
    let scores = Kernels.scores(
      queries: s.queries, heads: 2, keys: s.keys, scale: FullAttention.scale(headDim: s.d))
    let picked = try HCAttentionStep(tau: 1, mode: .exact).select(
      approximateScores: scores, heads: 2)
    var estimate = UnkeptTokenEstimate(headDim: s.d)
    estimate.add(s.values)
    let all = [Int32](0..<Int32(s.n))
    let tail = estimate.partial(scores: scores, selections: picked, attended: [all, all])
    #expect(tail.sumExps == [0, 0])
    // Without values there is nothing to estimate with.
    let empty = UnkeptTokenEstimate(headDim: s.d).partial(
      scores: scores, selections: picked, attended: [[0], [0]])
    #expect(empty.sumExps == [0, 0])
  }

  @Test("a recalling head attends its cache and its recalled tokens: their ascending union")
  func ascendingUnion() {
    #expect(TauMassSelection.ascendingUnion([1, 3, 5], [0, 3, 6]) == [0, 1, 3, 5, 6])
    #expect(TauMassSelection.ascendingUnion([], [2]) == [2])
    #expect(TauMassSelection.ascendingUnion([4], []) == [4])
  }
}

@Suite("Query-aware codes")
struct QueryAwareCodeTests {
  @Test("the map keeps every query-key dot product")
  func dotProductsSurvive() throws {
    let d = 32
    var observed = randomFloats(40 * d, seed: 8)
    for r in 0..<40 { observed[r * d] += 6 }  // a dominant direction, as real queries have
    let map = try #require(QueryMomentTransform(queries: observed, dim: d))
    let q = randomFloats(3 * d, seed: 9)
    let k = randomFloats(5 * d, seed: 10)
    let qc = map.queriesToCodedSpace(q)
    let kc = map.keysToCodedSpace(k)
    let back = map.keysFromCodedSpace(kc)
    #expect(relativeError(back, k) < 3e-3)
    for a in 0..<3 {
      for b in 0..<5 {
        let plain = dot(Array(q[a * d..<(a + 1) * d]), Array(k[b * d..<(b + 1) * d]))
        let mapped = dot(Array(qc[a * d..<(a + 1) * d]), Array(kc[b * d..<(b + 1) * d]))
        #expect(abs(plain - mapped) < 2e-2 * (1 + abs(plain)), "\(plain) vs \(mapped)")
      }
    }
    #expect(QueryMomentTransform(queries: [Float](repeating: 0, count: 2 * d), dim: d) == nil)
    #expect(QueryMomentTransform(queries: [Float](repeating: .nan, count: d), dim: d) == nil)
  }

  @Test(
    "codebooks trained where distance is score error score queries like the observed ones better than plain codes"
  )
  func queryAwareCodesScoreBetter() throws {
    let d = 32
    let n = 4096
    let keys = try randomMatrix(rows: n, cols: d, seed: 11)
    // Queries lean on a few dims: a score error there costs, one elsewhere is nearly free.
    func queries(_ rows: Int, seed: UInt64) -> [Float] {
      var q = randomFloats(rows * d, seed: seed, scale: 0.2)
      for r in 0..<rows { for c in 0..<4 { q[r * d + c] += 2 + Float(c) } }
      return q
    }
    let observed = queries(96, seed: 12)
    let decode = queries(64, seed: 13)
    var recipe = KeyIndexRecipe(codec: .pq, bits: 8, groupSize: 4, sinks: 0, window: 0)
    func scoreError(_ recipe: KeyIndexRecipe) throws -> Float {
      var index = try recipe.index(
        training: keys, queries: observed, geometry: "test", layer: 0, kvHead: 0)
      try index.append(keys)
      let approximate = try index.scores(queries: decode, heads: 64, scale: 1)
      let exact = Kernels.scores(queries: decode, heads: 64, keys: keys, scale: 1)
      return relativeError(approximate, exact)
    }
    let plain = try scoreError(recipe)
    recipe.queryAware = true
    let aware = try scoreError(recipe)
    #expect(aware < 0.7 * plain, "query-aware \(aware), plain \(plain)")
    // The map is charged: d² fp16 eigenvectors and d fp32 roots on top of the codebook.
    let plainShare = KeyIndexRecipe(codec: .pq, bits: 8, groupSize: 4, sinks: 0, window: 0)
      .share(headDim: d, tokens: n)
    #expect(
      abs(
        recipe.share(headDim: d, tokens: n) - plainShare - Double(d * d * 2 + d * 4)
          / Double(n * 4 * d)) < 1e-9)
  }
}

@Suite("Codes sized to the budget")
struct CodeFittingTests {
  @Test(
    "pq codes are coarsened until they and the held rows fit the budget, and left alone where they fit"
  )
  func fitting() {
    let recipe = KeyIndexRecipe(codec: .pq, bits: 8, groupSize: 4, sinks: 4, window: 64)
    // 64 dims, 8,000 tokens: 4-dim codes cost 6.25% plus the codebook and exact keys.
    let fits = recipe.fitting(budget: 0.125, headDim: 64, tokens: 8000, heldRows: 32)
    #expect(fits == recipe)
    let small = recipe.fitting(budget: 0.0625, headDim: 64, tokens: 8000, heldRows: 32)
    #expect(small.groupSize == 8)
    #expect(small.share(headDim: 64, tokens: 8000) + 32.0 / 8000 <= 0.0625)
    #expect(recipe.share(headDim: 64, tokens: 8000) + 32.0 / 8000 > 0.0625)
    // Nothing fits 1%: the coarsest codes the head allows, one group of all 64 dims.
    #expect(recipe.fitting(budget: 0.01, headDim: 64, tokens: 8000, heldRows: 32).groupSize == 64)
    let scalar = KeyIndexRecipe(codec: .scalar, bits: 4, groupSize: 4, sinks: 4, window: 64)
    #expect(scalar.fitting(budget: 0.01, headDim: 64, tokens: 8000, heldRows: 32) == scalar)
    // What a fitted recipe leaves buys finer codes, never past the budget.
    let heads = small.finerCodeHeads(
      90, budget: 0.0625, headDim: 64, prefillTokens: 8000, heldRows: 32)
    let extra =
      small.finer.share(headDim: 64, tokens: 8000) - small.share(headDim: 64, tokens: 8000)
    #expect(heads > 0 && heads < 90)
    let total = small.share(headDim: 64, tokens: 8000) + 32.0 / 8000 + extra * Double(heads) / 90
    #expect(total <= 0.0625)
  }
}
