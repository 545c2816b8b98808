/// How HCAttention turns the kept tokens into a context vector.
public enum HCAttentionOutputMode: String, Sendable, Hashable, Codable, CaseIterable {
  /// Weighted sum with the approximate weights as they are (the kept set holds ~tau of the
  /// mass, so the output is shrunk by that share).
  case raw
  /// Weighted sum with the weights renormalised over the kept set.
  case renormalized
  /// The kept tokens re-scored with their full-precision keys; returns output + log-sum-exp
  /// so partial results merge exactly.
  case exact
}

/// One HCAttention decode step for one KV head and its query group: approximate scores from
/// key codes, tau-mass selection per query head, then the context vector computed where the
/// values live from indices and weights only.
public struct HCAttentionStep: Sendable {
  /// Share of the approximate softmax mass to keep (the paper: 0.9).
  public var tau: Float
  /// Optional bound on kept tokens per head (ours; the paper has none).
  public var cap: Int?
  /// How the output is formed from the kept set.
  public var mode: HCAttentionOutputMode
  /// Whether each query head keeps its own set or the group keeps one (ours).
  public var scope: SelectionScope

  /// A step configuration; tau in (0, 1].
  public init(
    tau: Float = 0.9, cap: Int? = nil, mode: HCAttentionOutputMode = .renormalized,
    scope: SelectionScope = .queryHead
  ) throws {
    guard tau > 0, tau <= 1 else {
      throw HeteroKVError.invalid("tau must be in (0, 1], got \(tau)")
    }
    self.tau = tau
    self.cap = cap
    self.mode = mode
    self.scope = scope
  }

  /// The per-head selections from approximate scores `[heads][n]` (already scaled): each
  /// head's own, or the group's one set with each head's weights (`scope`).
  public func select(approximateScores: [Float], heads: Int) throws -> [TauMassSelection] {
    // The group kernel takes up to 64 heads a group; larger groups select per head.
    if scope == .kvGroup && heads > 1 && heads <= 64 {
      return try TauMassSelection.selectGroup(
        scores: approximateScores, heads: heads, tau: tau, cap: cap)
    }
    guard heads > 0, approximateScores.count % heads == 0 else {
      throw HeteroKVError.dimension(
        "\(approximateScores.count) scores do not split into \(heads) heads")
    }
    let n = approximateScores.count / heads
    return try (0..<heads).map { h in
      try TauMassSelection.select(
        scores: approximateScores[h * n..<(h + 1) * n], tau: tau, cap: cap)
    }
  }

  /// What each query head attends, from the heads' own selections: with exact outputs the
  /// group's union (a memory node reads those rows once, so every head is given all of them),
  /// else each head's own set.
  public func attended(_ picked: [TauMassSelection]) -> [TauMassSelection] {
    Self.attended(picked, mode: mode)
  }

  /// `attended(_:)` for output `mode`, where no step is at hand (the worker's plan).
  public static func attended(_ picked: [TauMassSelection], mode: HCAttentionOutputMode)
    -> [TauMassSelection]
  {
    mode == .exact ? TauMassSelection.groupUnion(picked) : picked
  }

  /// The context vectors for the kept sets. `values` (and `keys` in exact mode) are the
  /// full-precision rows, which in a deployment live on the memory node that runs this.
  public func contextVectors(
    selections: [TauMassSelection], queries: [Float], keys: HalfMatrix?, values: HalfMatrix
  ) throws -> AttentionPartial {
    let d = values.cols
    let heads = selections.count
    guard queries.count == heads * d else {
      throw HeteroKVError.dimension(
        "queries hold \(queries.count) values, expected \(heads) heads x \(d) dims")
    }
    var result = AttentionPartial.empty(heads: heads, headDim: d)
    for sel in selections {
      if let bad = sel.indices.first(where: { Int($0) >= values.rows || $0 < 0 }) {
        throw HeteroKVError.invalid("kept index \(bad) is outside the \(values.rows) stored rows")
      }
    }
    switch mode {
    case .raw, .renormalized:
      // The union of the group's kept sets, each row read once with every head's weight
      // (zero where a head did not keep it).
      // Slot of each kept position in the union, found by marking positions (linear in the
      // context, no sort).
      var slot = [Int32](repeating: -1, count: values.rows)
      for sel in selections { for i in sel.indices { slot[Int(i)] = 0 } }
      var union: [Int32] = []
      union.reserveCapacity(selections.map(\.indices.count).max() ?? 0)
      for j in 0..<values.rows where slot[j] == 0 {
        slot[j] = Int32(union.count)
        union.append(Int32(j))
      }
      var weights = [Float](repeating: 0, count: heads * union.count)
      for (h, sel) in selections.enumerated() {
        let w = mode == .raw ? sel.weights : sel.renormalizedWeights
        for (k, index) in sel.indices.enumerated() {
          weights[h * union.count + Int(slot[Int(index)])] = w[k]
        }
        // Not an exact partial: a max of 0 and the kept mass keep it mergeable by weight.
        result.maxScores[h] = 0
        result.sumExps[h] = sel.keptMass
      }
      result.outputs = Kernels.weightedSum(
        values: values, indices: union, weights: weights, heads: heads)
    case .exact:
      guard let keys, keys.rows == values.rows, keys.cols == d else {
        throw HeteroKVError.dimension("exact mode needs full-precision keys matching values")
      }
      for (h, sel) in selections.enumerated() {
        let rows = sel.indices.map(Int.init)
        let part = try FullAttention.attend(
          queries: Array(queries[h * d..<(h + 1) * d]), heads: 1,
          keys: keys.gather(rows), values: values.gather(rows))
        result.outputs.replaceSubrange(h * d..<(h + 1) * d, with: part.outputs)
        result.maxScores[h] = part.maxScores[0]
        result.sumExps[h] = part.sumExps[0]
      }
    }
    return result
  }

}
