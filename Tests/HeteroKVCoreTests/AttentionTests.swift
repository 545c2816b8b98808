import Foundation
import Testing

@testable import HeteroKVCore

@Suite struct AttentionTests {
  let d = 64

  @Test func fullAttentionMatchesNaiveComputation() throws {
    let n = 300
    let keys = try randomMatrix(rows: n, cols: d, seed: 1)
    let values = try randomMatrix(rows: n, cols: d, seed: 2)
    let q = randomFloats(2 * d, seed: 3)
    let part = try FullAttention.attend(queries: q, heads: 2, keys: keys, values: values)
    let kf = keys.floats()
    let vf = values.floats()
    for h in 0..<2 {
      let qh = Array(q[h * d..<(h + 1) * d])
      let s = (0..<n).map { j in
        Double(dot(qh, Array(kf[j * d..<(j + 1) * d]))) / Double(d).squareRoot()
      }
      let m = s.max()!
      let e = s.map { exp($0 - m) }
      let z = e.reduce(0, +)
      var out = [Float](repeating: 0, count: d)
      for j in 0..<n { for c in 0..<d { out[c] += Float(e[j] / z) * vf[j * d + c] } }
      #expect(relativeError(Array(part.output(head: h)), out) < 1e-5)
      #expect(abs(part.logSumExp[h] - Float(m + log(z))) < 1e-4)
    }
  }

  @Test func mergingSplitPartialsEqualsUnsplitAttention() throws {
    let n = 257
    let keys = try randomMatrix(rows: n, cols: d, seed: 4, scale: 2)
    let values = try randomMatrix(rows: n, cols: d, seed: 5)
    let q = randomFloats(4 * d, seed: 6)
    let whole = try FullAttention.attend(queries: q, heads: 4, keys: keys, values: values)
    let cuts = [0, 10, 100, 200, n]
    let parts = try (0..<4).map { i in
      let rows = Array(cuts[i]..<cuts[i + 1])
      return try FullAttention.attend(
        queries: q, heads: 4, keys: keys.gather(rows), values: values.gather(rows))
    }
    let merged = try AttentionPartial.merge(parts + [.empty(heads: 4, headDim: d)])
    #expect(relativeError(merged.outputs, whole.outputs) < 1e-5)
    for h in 0..<4 { #expect(abs(merged.logSumExp[h] - whole.logSumExp[h]) < 1e-4) }
  }

  @Test func tauSelectionKeepsTheSmallestPrefixReachingTau() throws {
    // Spreads from wide (many histogram buckets) to narrow, on one thread: a bucket left
    // from an earlier call would show up as a wrong prefix in a later one.
    for (seed, scale) in [(7, Float(3)), (9, 40), (11, 0.2), (7, 3)] {
      try checkTauPrefix(randomFloats(5000, seed: UInt64(seed), scale: scale))
    }
  }

  func checkTauPrefix(_ scores: [Float]) throws {
    for tau: Float in [0.5, 0.9, 0.99] {
      let sel = try TauMassSelection.select(scores: scores[...], tau: tau)
      // Reference: sort by weight, take the prefix.
      let m = scores.max()!
      let w = scores.map { Double(exp($0 - m)) }
      let total = w.reduce(0, +)
      let order = w.indices.sorted { w[$0] > w[$1] }
      var acc = 0.0
      var k = 0
      while acc < Double(tau) * total {
        acc += w[order[k]]
        k += 1
      }
      #expect(sel.indices.count == k)
      #expect(Set(sel.indices.map(Int.init)) == Set(order[0..<k]))
      #expect(sel.keptMass >= tau - 1e-4)
      // Dropping the smallest kept weight would fall below tau.
      #expect(sel.keptMass - sel.weights.min()! < tau)
      #expect(sel.indices == sel.indices.sorted())
    }
  }

  @Test(
    "a group's union holds every head's kept tokens once, ascending, each at its largest weight")
  func groupUnionOfSelections() throws {
    let selections = try [(3, 0.9), (4, 0.99), (5, 0.5)].map { seed, tau in
      try TauMassSelection.select(
        scores: randomFloats(3000, seed: UInt64(seed), scale: 4)[...], tau: Float(tau))
    }
    let shared = TauMassSelection.groupUnion(selections)
    #expect(shared.count == 3)
    let union = shared[0]
    var expected: [Int32: Float] = [:]
    for s in selections {
      for (t, w) in zip(s.indices, s.weights) { expected[t] = max(expected[t] ?? 0, w) }
    }
    #expect(union.indices == expected.keys.sorted())
    #expect(union.weights == union.indices.map { expected[$0]! })
    #expect(abs(union.keptMass - union.weights.reduce(0, +)) < 1e-5)
    #expect(union.indices.count < selections.map(\.indices.count).reduce(0, +))
    for s in shared { #expect(s.indices == union.indices && s.contextLength == 3000) }
    // One head: its own selection.
    #expect(TauMassSelection.groupUnion([selections[1]]) == [selections[1]])
  }

  @Test(
    "a group selection keeps the smallest set in mean probability reaching tau, with each head's own weights and normalizer"
  )
  func groupSelectionKeepsTheGroupsTauMass() throws {
    let heads = 3
    let n = 4000
    for (seed, scale) in [(21, Float(3)), (22, 30), (23, 0.3)] {
      // Heads that agree in part: a shared component plus each head's own.
      let shared = randomFloats(n, seed: UInt64(seed), scale: scale)
      var scores = [Float]()
      for h in 0..<heads {
        let own = randomFloats(n, seed: UInt64(seed * 10 + h), scale: scale)
        scores += zip(shared, own).map { $0 + $1 }
      }
      // Reference in double: each head's softmax, their mean, the prefix by mean.
      var probability = [[Double]]()
      var logNormalizer = [Double]()
      for h in 0..<heads {
        let row = scores[h * n..<(h + 1) * n].map(Double.init)
        let m = row.max()!
        let z = row.reduce(0) { $0 + exp($1 - m) }
        probability.append(row.map { exp($0 - m) / z })
        logNormalizer.append(m + log(z))
      }
      let mean = (0..<n).map { j in probability.reduce(0) { $0 + $1[j] } / Double(heads) }
      for tau: Float in [0.5, 0.9, 0.99] {
        let picked = try TauMassSelection.selectGroup(scores: scores, heads: heads, tau: tau)
        #expect(picked.count == heads)
        let order = mean.indices.sorted { mean[$0] > mean[$1] }
        var acc = 0.0
        var k = 0
        while acc < Double(tau) {
          acc += mean[order[k]]
          k += 1
        }
        let kept = picked[0].indices
        #expect(abs(kept.count - k) <= 1, "kept \(kept.count), the prefix \(k)")
        #expect(Set(kept.map(Int.init)).isSubset(of: Set(order[0..<(k + 1)])))
        #expect(kept == kept.sorted())
        let meanMass = kept.reduce(0.0) { $0 + mean[Int($1)] }
        #expect(meanMass >= Double(tau) - 1e-4)
        for h in 0..<heads {
          #expect(picked[h].indices == kept)
          #expect(picked[h].contextLength == n)
          #expect(abs(Double(picked[h].logNormalizer) - logNormalizer[h]) < 1e-3)
          for (t, w) in zip(kept, picked[h].weights) {
            #expect(abs(Double(w) - probability[h][Int(t)]) < 1e-5)
          }
          #expect(abs(picked[h].keptMass - picked[h].weights.reduce(0, +)) < 1e-5)
        }
        // The step's group scope gives the same, and exact output attends it as it is.
        let step = try HCAttentionStep(tau: tau, mode: .exact, scope: .kvGroup)
        let viaStep = try step.select(approximateScores: scores, heads: heads)
        #expect(viaStep == picked)
        #expect(step.attended(viaStep).map(\.indices) == Array(repeating: kept, count: heads))
      }
    }
    // One head: the same set as its own selection.
    let one = randomFloats(3000, seed: 31, scale: 4)
    let own = try TauMassSelection.select(scores: one[...], tau: 0.9)
    let group = try TauMassSelection.selectGroup(scores: one, heads: 1, tau: 0.9)
    #expect(group[0].indices == own.indices)
    #expect(abs(group[0].logNormalizer - own.logNormalizer) < 1e-4)
    // Past the kernel's 64 heads a group selects per head.
    let wide = try HCAttentionStep(tau: 0.9, scope: .kvGroup).select(
      approximateScores: randomFloats(65 * 200, seed: 33, scale: 4), heads: 65)
    #expect(wide.count == 65 && wide[0].indices != wide[1].indices)
    // A cap bounds it; bad input is refused by name.
    let capped = try TauMassSelection.selectGroup(
      scores: randomFloats(3 * 1000, seed: 32), heads: 3, tau: 0.9, cap: 17)
    #expect(capped.allSatisfy { $0.indices.count == 17 })
    #expect(throws: HeteroKVError.self) {
      try TauMassSelection.selectGroup(scores: [1, 2, 3, 4], heads: 3, tau: 0.9)
    }
    #expect(throws: HeteroKVError.self) {
      try TauMassSelection.selectGroup(scores: [1, .nan, 3, 4], heads: 2, tau: 0.9)
    }
  }

  @Test(
    "a group selection whose maxima rise late keeps the same set as the reference; a NaN or +inf among many scores is refused"
  )
  func groupSelectionAcrossChunks() throws {
    let (heads, n) = (4, 9000)
    var scores = randomFloats(heads * n, seed: 51, scale: 2)
    // Each head's largest scores in its last chunk, 15 nats above the rest, so the first
    // chunks' numerators are taken against a maximum that later rises.
    for h in 0..<heads { scores[h * n + n - 1 - h] += 15 }
    for tau: Float in [0.6, 0.95] {
      let picked = try TauMassSelection.selectGroup(scores: scores, heads: heads, tau: tau)
      var mean = [Double](repeating: 0, count: n)
      for h in 0..<heads {
        let row = scores[h * n..<(h + 1) * n].map(Double.init)
        let m = row.max()!
        let z = row.reduce(0) { $0 + exp($1 - m) }
        for j in 0..<n { mean[j] += exp(row[j] - m) / z / Double(heads) }
        for (t, w) in zip(picked[h].indices, picked[h].weights) {
          #expect(abs(Double(w) - exp(row[Int(t)] - m) / z) < 1e-6)
        }
      }
      let order = mean.indices.sorted { mean[$0] > mean[$1] }
      var (acc, k) = (0.0, 0)
      while acc < Double(tau) {
        acc += mean[order[k]]
        k += 1
      }
      #expect(abs(picked[0].indices.count - k) <= 1)
      #expect(Set(picked[0].indices.map(Int.init)).isSubset(of: Set(order[0..<(k + 1)])))
    }
    for bad in [Float.nan, .infinity] {
      var spoiled = scores
      spoiled[2 * n + 4321] = bad
      #expect(throws: HeteroKVError.self, "\(bad)") {
        try TauMassSelection.selectGroup(scores: spoiled, heads: heads, tau: 0.9)
      }
    }
  }

  @Test("NaN scores never index outside the selection's histogram or the context")
  func tauSelectionWithNaNScores() throws {
    var scores = randomFloats(4096, seed: 12, scale: 3)
    for j in stride(from: 5, to: 4096, by: 97) { scores[j] = .nan }
    scores[4000] = 50  // a true maximum a NaN lane may hide
    for _ in 0..<3 {
      if let sel = try? TauMassSelection.select(scores: scores[...], tau: 0.9) {
        #expect(sel.indices.allSatisfy { $0 >= 0 && $0 < 4096 })
        #expect(sel.indices == sel.indices.sorted())
      }
    }
    // The same thread's next selection is unaffected.
    try checkTauPrefix(randomFloats(5000, seed: 7, scale: 3))
  }

  @Test func tauSelectionHonoursTheCap() throws {
    let sel = try TauMassSelection.select(
      scores: randomFloats(1000, seed: 8)[...], tau: 0.9, cap: 17)
    #expect(sel.indices.count == 17)
  }

  @Test func sparseStepAtFullBudgetEqualsFullAttention() throws {
    let n = 1000
    let keys = try randomMatrix(rows: n, cols: d, seed: 9)
    let values = try randomMatrix(rows: n, cols: d, seed: 10)
    let q = randomFloats(4 * d, seed: 11)
    let full = try FullAttention.attend(queries: q, heads: 4, keys: keys, values: values)
    let exact = Kernels.scores(queries: q, heads: 4, keys: keys, scale: 1 / Float(d).squareRoot())
    for mode in HCAttentionOutputMode.allCases {
      let step = try HCAttentionStep(tau: 1.0, mode: mode)
      let sel = try step.select(approximateScores: exact, heads: 4)
      let out = try step.contextVectors(selections: sel, queries: q, keys: keys, values: values)
      #expect(relativeError(out.outputs, full.outputs) < 1e-4, "mode \(mode)")
    }
  }

  @Test func exactPartialsFromTwoMemoryNodesMergeToTheUnsplitStep() throws {
    // Tokens 0..<600 live on one node, 600..<1000 on another; each re-scores only the kept
    // tokens it holds and the worker merges by log-sum-exp.
    let n = 1000
    let cut = 600
    let keys = try randomMatrix(rows: n, cols: d, seed: 21, scale: 2)
    let values = try randomMatrix(rows: n, cols: d, seed: 22)
    let q = randomFloats(4 * d, seed: 23)
    let step = try HCAttentionStep(tau: 0.8, mode: .exact)
    let approx = Kernels.scores(queries: q, heads: 4, keys: keys, scale: 1 / Float(d).squareRoot())
    let selections = try step.select(approximateScores: approx, heads: 4)
    let whole = try step.contextVectors(
      selections: selections, queries: q, keys: keys, values: values)
    func part(_ range: Range<Int>) throws -> AttentionPartial {
      let local = selections.map { sel in
        var s = sel
        let kept = sel.indices.enumerated().filter { range.contains(Int($0.element)) }
        s.indices = kept.map { $0.element - Int32(range.lowerBound) }
        s.weights = kept.map { sel.weights[$0.offset] }
        return s
      }
      let rows = Array(range)
      return try step.contextVectors(
        selections: local, queries: q, keys: keys.gather(rows), values: values.gather(rows))
    }
    let merged = try AttentionPartial.merge([try part(0..<cut), try part(cut..<n)])
    #expect(relativeError(merged.outputs, whole.outputs) < 1e-5)
    for h in 0..<4 { #expect(abs(merged.logSumExp[h] - whole.logSumExp[h]) < 1e-4) }
  }

  @Test func typedErrorsForBadInput() throws {
    let keys = try randomMatrix(rows: 10, cols: d, seed: 12)
    #expect(throws: HeteroKVError.self) {
      try FullAttention.attend(queries: [1, 2, 3], heads: 1, keys: keys, values: keys)
    }
    do {
      _ = try FullAttention.attend(
        queries: [Float](repeating: .nan, count: d), heads: 1, keys: keys, values: keys)
      Issue.record("NaN query accepted")
    } catch let e as HeteroKVError {
      #expect(e.code == .nonFiniteInput)
      #expect(e.message.contains("query"))
    }
    do {
      _ = try FullAttention.attend(
        queries: randomFloats(d, seed: 1), heads: 1, keys: HalfMatrix(cols: d),
        values: HalfMatrix(cols: d))
      Issue.record("empty context accepted")
    } catch let e as HeteroKVError {
      #expect(e.code == .emptyContext)
    }
    #expect(throws: HeteroKVError.self) { try TauMassSelection.select(scores: [][...], tau: 0.9) }
    #expect(throws: HeteroKVError.self) { try HCAttentionStep(tau: 1.5) }
  }
}

@Suite("Near-data partial attention") struct NearDataAttentionTests {
  @Test("exact partials equal full attention, and split parts merge back to it")
  func exactMatchesFullAttention() throws {
    let (n, d, heads) = (97, 64, 3)
    let keys = try randomMatrix(rows: n, cols: d, seed: 11)
    let values = try randomMatrix(rows: n, cols: d, seed: 12)
    let q = randomFloats(heads * d, seed: 13)
    let full = try FullAttention.attend(queries: q, heads: heads, keys: keys, values: values)
    let scale = FullAttention.scale(headDim: d)
    let whole = try AttentionPartial.exact(
      queries: q, heads: heads, keys: keys, values: values, scale: scale)
    #expect(relativeError(whole.outputs, full.outputs) < 1e-5)
    let front = Array(0..<40)
    let back = Array(40..<n)
    let merged = try AttentionPartial.merge([
      try .exact(
        queries: q, heads: heads, keys: keys.gather(front), values: values.gather(front),
        scale: scale),
      try .exact(
        queries: q, heads: heads, keys: keys.gather(back), values: values.gather(back),
        scale: scale),
    ])
    #expect(relativeError(merged.outputs, full.outputs) < 1e-5)
    #expect(throws: HeteroKVError.self) {
      try AttentionPartial.exact(
        queries: q, heads: heads + 1, keys: keys, values: values, scale: scale)
    }
  }

  @Test("weighted partials are the weight-normalised sum; a zero-weight head stays empty")
  func weightedIsNormalised() throws {
    let (n, d) = (10, 8)
    let values = try randomMatrix(rows: n, cols: d, seed: 21)
    let w = (0..<n).map { Float($0 + 1) }
    let part = try AttentionPartial.weighted(
      w + [Float](repeating: 0, count: n), heads: 2, values: values)
    let total = w.reduce(0, +)
    var expected = [Float](repeating: 0, count: d)
    for j in 0..<n {
      for (c, v) in values.row(j).enumerated() { expected[c] += w[j] / total * v }
    }
    #expect(relativeError(Array(part.output(head: 0)), expected) < 1e-5)
    #expect(part.sumExps == [total, 0])
    #expect(part.maxScores[1] == -.infinity)
    #expect(part.output(head: 1).allSatisfy { $0 == 0 })
  }
}
