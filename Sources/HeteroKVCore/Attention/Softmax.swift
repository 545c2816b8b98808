import CHeteroKVKernels

/// Numerically stable softmax pieces shared by every attention path.
public enum Softmax {
  /// In place: `x[i] = exp(x[i] - max)` over `range`; returns (max, Σ).
  @discardableResult
  public static func exponentiate(_ x: inout [Float], range: Range<Int>) -> (max: Float, sum: Float)
  {
    var m: Float = 0
    let s = x.withUnsafeMutableBufferPointer { buffer in
      hkv_softmax_exp(buffer.baseAddress! + range.lowerBound, range.count, &m)
    }
    return (m, s)
  }

  /// Softmax of each row of a head-major `[heads][n]` score matrix, in place; returns the
  /// per-head max and sum of exponentials (before normalising).
  public static func normalizeRows(_ scores: inout [Float], heads: Int, n: Int)
    -> (max: [Float], sum: [Float])
  {
    var maxes = [Float](repeating: -.infinity, count: heads)
    var sums = [Float](repeating: 0, count: heads)
    for h in 0..<heads {
      let (m, s) = exponentiate(&scores, range: h * n..<(h + 1) * n)
      maxes[h] = m
      sums[h] = s
      if s > 0 {
        let inv = 1 / s
        for i in h * n..<(h + 1) * n { scores[i] *= inv }
      }
    }
    return (maxes, sums)
  }
}
