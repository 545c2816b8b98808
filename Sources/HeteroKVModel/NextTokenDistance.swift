import Foundation

/// How far one next-token distribution is from another: the measures `hkv needle` and
/// `hkv fidelity` report for a cache policy against the full cache.
public enum NextTokenDistance {
  /// The index of the largest logit (the greedy choice).
  public static func argmax(_ logits: [Float]) -> Int {
    var best = 0
    for i in logits.indices where logits[i] > logits[best] { best = i }
    return best
  }

  /// KL(softmax(reference) || softmax(other)) in nats, in double precision.
  public static func klDivergence(_ reference: [Float], _ other: [Float]) -> Double {
    precondition(reference.count == other.count && !reference.isEmpty)
    let lp = logSoftmax(reference)
    let lq = logSoftmax(other)
    var kl = 0.0
    for i in lp.indices { kl += exp(lp[i]) * (lp[i] - lq[i]) }
    return max(0, kl)
  }

  static func logSoftmax(_ x: [Float]) -> [Double] {
    let m = Double(x.max()!)
    var sum = 0.0
    for v in x { sum += exp(Double(v) - m) }
    let lse = m + log(sum)
    return x.map { Double($0) - lse }
  }
}
