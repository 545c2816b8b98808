import CHeteroKVKernels

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
  /// log Σ exp(score) over the whole context: turns a score into its softmax weight (0 for a
  /// group's union, which no single head's scores normalize).
  public var logNormalizer: Float = 0

  /// A selection's arguments, refused by name: some tokens, tau in (0, 1], a cap of at least 1.
  static func checkArguments(tokens n: Int, tau: Float, cap: Int?) throws {
    guard n > 0 else { throw HeteroKVError(.emptyContext, "tau selection over 0 tokens") }
    guard tau > 0, tau <= 1 else {
      throw HeteroKVError.invalid("tau must be in (0, 1], got \(tau)")
    }
    if let cap, cap < 1 { throw HeteroKVError.invalid("selection cap must be >= 1, got \(cap)") }
  }

  /// Weights divided by the kept mass, so they sum to 1 over the kept set.
  public var renormalizedWeights: [Float] {
    keptMass > 0 ? weights.map { $0 / keptMass } : weights
  }

  /// Chooses from the scaled scores of one head. `cap` optionally bounds the kept count.
  ///
  /// Linear time (in C, `hkv_tau_select`): weights are bucketed by how far below the maximum
  /// their score lies (1/64 nat per bucket), whole buckets are kept while the mass stays below
  /// the target, and only the bucket that crosses it is sorted.
  public static func select(scores: ArraySlice<Float>, tau: Float, cap: Int? = nil) throws
    -> TauMassSelection
  {
    let n = scores.count
    try checkArguments(tokens: n, tau: tau, cap: cap)
    // Room for every token, filled by the kernel and trimmed to the kept count.
    var mass: Float = 0
    var logNormalizer: Float = 0
    var kept = 0
    var weights = [Float]()
    let indices = try [Int32](unsafeUninitializedCapacity: n) { idx, idxCount in
      weights = [Float](unsafeUninitializedCapacity: n) { w, wCount in
        kept = scores.withUnsafeBufferPointer { s in
          hkv_tau_select(
            s.baseAddress!, n, tau, cap ?? 0, idx.baseAddress!, w.baseAddress!, &mass,
            &logNormalizer)
        }
        wCount = kept
      }
      guard kept > 0 else {
        idxCount = 0
        throw HeteroKVError(.nonFiniteInput, "scores have no finite maximum or a non-finite sum")
      }
      idxCount = kept
    }
    return TauMassSelection(
      indices: indices, weights: weights, keptMass: mass, contextLength: n,
      logNormalizer: logNormalizer)
  }
}

extension TauMassSelection {
  /// One kept set for a GQA group of `heads` query heads over their scaled scores
  /// `[heads][n]`: the smallest set, in descending mean softmax probability over the group,
  /// whose mean mass reaches tau (`SelectionScope.kvGroup`). Every head gets the same indices
  /// (one shared list) with its own weights, kept mass and log-normalizer. One histogram pass
  /// for the group instead of one per head, and no union afterwards.
  public static func selectGroup(
    scores: [Float], heads: Int, tau: Float, cap: Int? = nil
  ) throws -> [TauMassSelection] {
    guard heads > 0, heads <= 64, scores.count % heads == 0 else {
      throw HeteroKVError.dimension(
        "\(scores.count) scores do not split into \(heads) heads (1 to 64)")
    }
    let n = scores.count / heads
    try checkArguments(tokens: n, tau: tau, cap: cap)
    var mass = [Float](repeating: 0, count: heads)
    var logNormalizers = [Float](repeating: 0, count: heads)
    var kept = 0
    var weights = [Float]()
    let indices = try [Int32](unsafeUninitializedCapacity: n) { idx, idxCount in
      weights = [Float](unsafeUninitializedCapacity: heads * n) { w, wCount in
        kept = scores.withUnsafeBufferPointer { s in
          hkv_tau_select_group(
            s.baseAddress!, heads, n, tau, cap ?? 0, idx.baseAddress!, w.baseAddress!, &mass,
            &logNormalizers)
        }
        wCount = heads * kept
      }
      guard kept > 0 else {
        idxCount = 0
        throw HeteroKVError(.nonFiniteInput, "scores have no finite maximum or a non-finite sum")
      }
      idxCount = kept
    }
    return (0..<heads).map { h in
      TauMassSelection(
        indices: indices, weights: Array(weights[h * kept..<(h + 1) * kept]), keptMass: mass[h],
        contextLength: n, logNormalizer: logNormalizers[h])
    }
  }
}

/// What a decode step's tau-mass selection is made over.
public enum SelectionScope: String, Sendable, Hashable, Codable, CaseIterable {
  /// Each query head keeps its own tau-mass set (the paper's rule); with exact outputs a GQA
  /// group then attends the union of its heads' sets.
  case queryHead = "query_head"
  /// One set per KV head: the tokens holding tau of the group's mean probability, attended by
  /// every query head of the group.
  case kvGroup = "kv_group"
}

extension TauMassSelection {
  /// The selection a GQA group's query heads share: the ascending union of their kept
  /// tokens, for each head, with each token's weight the largest any head gave it (the union
  /// holds at least every head's own tau mass). In exact mode a memory node then reads and
  /// copies the group's rows once and scores every head over them, instead of once per head.
  public static func groupUnion(_ selections: [TauMassSelection]) -> [TauMassSelection] {
    guard selections.count > 1 else { return selections }
    // A group selection's heads already share one list (compared by storage first).
    if selections.dropFirst().allSatisfy({ $0.indices == selections[0].indices }) {
      return selections
    }
    // One mark per context token (the largest weight seen, -1 for none), then one scan: linear
    // in the context and the kept counts, with no per-token branching on the heads.
    let n = selections.map(\.contextLength).max()!
    var best = [Float](repeating: -1, count: n)
    let count = best.withUnsafeMutableBufferPointer { mark -> Int in
      var count = 0
      for selection in selections {
        selection.indices.withUnsafeBufferPointer { idx in
          selection.weights.withUnsafeBufferPointer { w in
            for k in 0..<idx.count {
              let t = Int(idx[k])
              precondition(t >= 0 && t < n, "kept token \(t) outside the context of \(n)")
              let old = mark[t]
              count &+= old < 0 ? 1 : 0
              mark[t] = Swift.max(old, w[k])
            }
          }
        }
      }
      return count
    }
    var weights = [Float](repeating: 0, count: count)
    var mass: Float = 0
    // One slot more than kept: every token is written at the cursor, which moves only past
    // the kept ones (no branch on which they are).
    weights.append(0)
    let indices = [Int32](unsafeUninitializedCapacity: count + 1) { out, written in
      written = weights.withUnsafeMutableBufferPointer { wOut in
        best.withUnsafeBufferPointer { mark in
          var k = 0
          var sum: Float = 0
          for t in 0..<n {
            let v = mark[t]
            let keep = v >= 0
            out[k] = Int32(truncatingIfNeeded: t)
            wOut[k] = keep ? v : 0
            sum += keep ? v : 0
            k &+= keep ? 1 : 0
          }
          mass = sum
          return k
        }
      }
    }
    weights.removeLast()
    return selections.map {
      TauMassSelection(
        indices: indices, weights: weights, keptMass: mass, contextLength: $0.contextLength)
    }
  }
}

extension TauMassSelection {
  /// The ascending union of ascending kept tokens `a` and ascending positions `b`, each once:
  /// what a recalling head attends (its cache and the tokens it recalls).
  public static func ascendingUnion(_ a: [Int32], _ b: [Int]) -> [Int32] {
    var out = [Int32]()
    out.reserveCapacity(a.count + b.count)
    var i = 0
    var j = 0
    while i < a.count || j < b.count {
      let x = i < a.count ? Int(a[i]) : Int.max
      let y = j < b.count ? b[j] : Int.max
      out.append(Int32(truncatingIfNeeded: min(x, y)))
      if x <= y { i += 1 }
      if y <= x { j += 1 }
    }
    return out
  }

  /// This selection without the tokens of `held` (ascending): what a compressed cache holding
  /// `held` must still recall from the memory tier. Kept mass and length are unchanged.
  public func excluding(_ held: [Int]) -> TauMassSelection {
    var out = self
    let n = indices.count
    // One merge pass over both ascending lists, every token written at the cursor and kept by
    // moving it (no branch on whether the cache holds it); one slot more for the last write.
    var weightsOut = [Float](repeating: 0, count: n + 1)
    out.indices = [Int32](unsafeUninitializedCapacity: n + 1) { idx, written in
      written = weightsOut.withUnsafeMutableBufferPointer { w in
        indices.withUnsafeBufferPointer { src in
          weights.withUnsafeBufferPointer { srcW in
            held.withUnsafeBufferPointer { h in
              var j = 0
              var k = 0
              for i in 0..<n {
                let token = Int(src[i])
                while j < h.count && h[j] < token { j += 1 }
                idx[k] = src[i]
                w[k] = srcW[i]
                k &+= j < h.count && h[j] == token ? 0 : 1
              }
              return k
            }
          }
        }
      }
    }
    weightsOut.removeLast(n + 1 - out.indices.count)
    out.weights = weightsOut
    return out
  }
}
