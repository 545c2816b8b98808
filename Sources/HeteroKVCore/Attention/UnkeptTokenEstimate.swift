import CHeteroKVKernels
import Foundation

/// What the tokens an HCAttention step did not keep contribute, estimated instead of dropped:
/// their softmax mass from the approximate scores (one minus the attended set's share) times
/// the mean value of every token the head holds (a running sum the worker keeps as values go
/// by, d floats). As an `AttentionPartial` it merges exactly with the kept tokens' exact
/// partials, so the output is the kept tokens' exact attention plus a first-order estimate of
/// the tail, not the kept tokens alone renormalized: the tail's mass no longer goes to them.
public struct UnkeptTokenEstimate: Sendable, Hashable {
  /// Σ of every value stored, fp32, `[headDim]`.
  public private(set) var valueSum: [Float]
  /// Values summed.
  public private(set) var count = 0

  /// An estimate with no values yet.
  public init(headDim: Int) {
    valueSum = [Float](repeating: 0, count: headDim)
  }

  /// Head dimension.
  public var headDim: Int { valueSum.count }
  /// Bytes it keeps resident: the sum and the count.
  public var byteCount: Int { valueSum.count * 4 + 8 }

  /// Adds stored values `[rows][headDim]` to the sum.
  public mutating func add(_ values: HalfMatrix) {
    precondition(values.cols == headDim)
    let d = headDim
    let rows = values.floats()
    valueSum.withUnsafeMutableBufferPointer { sum in
      rows.withUnsafeBufferPointer { v in
        for r in 0..<values.rows {
          for c in 0..<d { sum[c] += v[r * d + c] }
        }
      }
    }
    count += values.rows
  }

  /// `partial`, the exact attention over the attended sets, completed with the estimate of
  /// the tokens outside them.
  public func completing(
    _ partial: AttentionPartial, scores: [Float], selections: [TauMassSelection],
    attended: [[Int32]]
  ) throws -> AttentionPartial {
    try AttentionPartial.merge([
      partial, self.partial(scores: scores, selections: selections, attended: attended),
    ])
  }

  /// The partial standing for the tokens outside `attended[h]` (ascending indices each query
  /// head attends exactly) of query heads whose approximate scaled scores are `scores`
  /// (`[heads][n]`) and whose own selections carry each head's log-normalizer. Its weight per
  /// head is Σ exp(score) over the tokens outside the set; empty for a head that attends all.
  public func partial(
    scores: [Float], selections: [TauMassSelection], attended: [[Int32]]
  ) -> AttentionPartial {
    let heads = selections.count
    let d = headDim
    var tail = AttentionPartial.empty(heads: heads, headDim: d)
    guard count > 0, heads > 0, attended.count == heads, scores.count % heads == 0 else {
      return tail
    }
    let n = scores.count / heads
    let mean = valueSum.map { $0 / Float(count) }
    // The attended scores gathered, then one vectorized exp-sum (the kernel the selection uses).
    var gathered = [Float](repeating: 0, count: attended.map(\.count).max() ?? 0)
    scores.withUnsafeBufferPointer { s in
      for h in 0..<heads {
        let lse = selections[h].logNormalizer
        var k = 0
        attended[h].withUnsafeBufferPointer { kept in
          gathered.withUnsafeMutableBufferPointer { g in
            for i in kept where Int(i) >= 0 && Int(i) < n {
              g[k] = s[h * n + Int(i)]
              k += 1
            }
          }
        }
        var top: Float = 0
        let sum = k > 0 ? hkv_softmax_exp(&gathered, k, &top) : 0
        let mass = k > 0 ? sum * Foundation.exp(top - lse) : 0
        let unkept = 1 - mass
        // Rounding leaves a few ulps where everything was attended: no tail then.
        guard unkept > 1e-6, attended[h].count < n else { continue }
        tail.outputs.replaceSubrange(h * d..<(h + 1) * d, with: mean)
        tail.maxScores[h] = lse + Foundation.log(unkept)
        tail.sumExps[h] = 1
      }
    }
    return tail
  }
}
