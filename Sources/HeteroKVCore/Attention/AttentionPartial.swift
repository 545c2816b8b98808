import Foundation

/// The result of attention over one part of a context, for a group of query heads, in a form
/// that merges exactly with other parts: per head the normalised output vector, the running
/// maximum score and the sum of exp(score - max). This is what a memory node returns.
public struct AttentionPartial: Sendable, Hashable {
  /// Head dimension.
  public var headDim: Int
  /// Normalised outputs, `[heads][headDim]` row-major.
  public var outputs: [Float]
  /// Per head, the largest scaled score seen (`-inf` when the part was empty).
  public var maxScores: [Float]
  /// Per head, Σ exp(score - maxScore) over the part.
  public var sumExps: [Float]

  /// Number of query heads.
  public var heads: Int { maxScores.count }

  /// A partial; the arrays must agree in head count.
  public init(headDim: Int, outputs: [Float], maxScores: [Float], sumExps: [Float]) {
    precondition(outputs.count == maxScores.count * headDim && sumExps.count == maxScores.count)
    self.headDim = headDim
    self.outputs = outputs
    self.maxScores = maxScores
    self.sumExps = sumExps
  }

  /// An empty part: merging it changes nothing.
  public static func empty(heads: Int, headDim: Int) -> AttentionPartial {
    AttentionPartial(
      headDim: headDim, outputs: [Float](repeating: 0, count: heads * headDim),
      maxScores: [Float](repeating: -.infinity, count: heads),
      sumExps: [Float](repeating: 0, count: heads))
  }

  /// log Σ exp(score) per head.
  public var logSumExp: [Float] {
    zip(maxScores, sumExps).map { m, s in s > 0 ? m + Float(log(Double(s))) : -.infinity }
  }

  /// The output of one head.
  public func output(head: Int) -> ArraySlice<Float> {
    outputs[head * headDim..<(head + 1) * headDim]
  }

  /// Merges partials over disjoint parts of one context into the partial over their union,
  /// exactly (log-sum-exp rescaling).
  public static func merge(_ parts: [AttentionPartial]) throws -> AttentionPartial {
    guard let first = parts.first else {
      throw HeteroKVError(.emptyContext, "cannot merge zero attention partials")
    }
    for p in parts where p.heads != first.heads || p.headDim != first.headDim {
      throw HeteroKVError.dimension(
        "cannot merge partials of \(p.heads)x\(p.headDim) with \(first.heads)x\(first.headDim)")
    }
    var merged = AttentionPartial.empty(heads: first.heads, headDim: first.headDim)
    let d = first.headDim
    for h in 0..<first.heads {
      let m = parts.map { $0.maxScores[h] }.max()!
      if m == -.infinity { continue }
      var total: Float = 0
      var acc = [Float](repeating: 0, count: d)
      for p in parts where p.sumExps[h] > 0 {
        let w = p.sumExps[h] * Float(exp(Double(p.maxScores[h] - m)))
        total += w
        for c in 0..<d { acc[c] += w * p.outputs[h * d + c] }
      }
      merged.maxScores[h] = m
      merged.sumExps[h] = total
      for c in 0..<d { merged.outputs[h * d + c] = acc[c] / total }
    }
    return merged
  }
}
