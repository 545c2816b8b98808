/// The tokens one query head keeps at one decode step under HCAttention's dynamic eviction:
/// the smallest set, taken in descending weight, whose share of the (approximate) softmax mass
/// reaches tau. Nothing is dropped for good; the next step chooses again.
public struct TauMassSelection: Sendable, Hashable {
  /// Kept token indices, ascending (the order a memory node reads them in).
  public var indices: [Int32]
  /// Softmax weight of each kept token over the whole context (not renormalised).
  public var weights: [Float]
  /// Σ weights: the share of the approximate mass the kept set holds.
  public var keptMass: Float
  /// Tokens the choice was made over.
  public var contextLength: Int

  /// Weights divided by the kept mass, so they sum to 1 over the kept set.
  public var renormalizedWeights: [Float] {
    keptMass > 0 ? weights.map { $0 / keptMass } : weights
  }

  /// Chooses from the scaled scores of one head. `cap` optionally bounds the kept count.
  ///
  /// Linear time: weights are bucketed by how far below the maximum their score lies (1/8 nat
  /// per bucket), whole buckets are kept while the mass stays below the target, and only the
  /// bucket that crosses it is sorted.
  public static func select(scores: ArraySlice<Float>, tau: Float, cap: Int? = nil) throws
    -> TauMassSelection
  {
    let n = scores.count
    guard n > 0 else { throw HeteroKVError(.emptyContext, "tau selection over 0 tokens") }
    guard tau > 0, tau <= 1 else {
      throw HeteroKVError.invalid("tau must be in (0, 1], got \(tau)")
    }
    if let cap, cap < 1 { throw HeteroKVError.invalid("selection cap must be >= 1, got \(cap)") }
    var w = Array(scores)
    let (m, total) = Softmax.exponentiate(&w, range: 0..<n)
    guard m.isFinite, total.isFinite, total > 0 else {
      throw HeteroKVError(.nonFiniteInput, "scores have no finite maximum (max \(m))")
    }
    let bucketsPerNat: Float = 8
    let bucketCount = 512
    var bucketOf = [UInt16](repeating: 0, count: n)
    var mass = [Double](repeating: 0, count: bucketCount)
    var counts = [Int](repeating: 0, count: bucketCount)
    for j in 0..<n {
      let gap = (m - scores[scores.startIndex + j]) * bucketsPerNat
      let b = gap < Float(bucketCount - 1) ? Int(gap) : bucketCount - 1
      bucketOf[j] = UInt16(b)
      mass[b] += Double(w[j])
      counts[b] += 1
    }
    let target = Double(tau) * Double(total)
    var cumulative = 0.0
    var boundary = bucketCount - 1
    for b in 0..<bucketCount {
      if cumulative + mass[b] >= target {
        boundary = b
        break
      }
      cumulative += mass[b]
    }
    var kept: [Int32] = []
    kept.reserveCapacity(counts[0..<boundary].reduce(0, +) + 16)
    var candidates: [Int32] = []
    candidates.reserveCapacity(counts[boundary])
    for j in 0..<n {
      let b = Int(bucketOf[j])
      if b < boundary {
        kept.append(Int32(j))
      } else if b == boundary {
        candidates.append(Int32(j))
      }
    }
    candidates.sort { w[Int($0)] > w[Int($1)] || (w[Int($0)] == w[Int($1)] && $0 < $1) }
    for j in candidates where cumulative < target {
      kept.append(j)
      cumulative += Double(w[Int(j)])
    }
    if let cap, kept.count > cap {
      kept.sort { w[Int($0)] > w[Int($1)] || (w[Int($0)] == w[Int($1)] && $0 < $1) }
      kept.removeLast(kept.count - cap)
    }
    kept.sort()
    let inv = 1 / total
    let weights = kept.map { w[Int($0)] * inv }
    return TauMassSelection(
      indices: kept, weights: weights, keptMass: weights.reduce(0, +), contextLength: n)
  }
}
