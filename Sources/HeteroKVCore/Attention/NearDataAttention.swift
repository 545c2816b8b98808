import CHeteroKVKernels

// The one near-data partial attention: what a memory node computes over the kept rows it
// holds, and what the worker computes over the kept rows it still holds. A memory node reads
// its rows in place (through row pointers into its pages); the worker gathers its few tail
// rows contiguous. Either way a group of query heads is scored (exact mode) or weighed in one
// pass of the kernels, each row read once.

extension AttentionPartial {
  /// Exact attention of `heads` queries `[heads][d]` over every row of `keys`/`values`:
  /// scores `scale·q·k`, per head the max and Σ exp(score - max), and the normalised
  /// weighted sum of the values. Rows read once for all heads.
  public static func exact(
    queries: [Float], heads: Int, keys: HalfMatrix, values: HalfMatrix, scale: Float
  ) throws -> AttentionPartial {
    let n = values.rows
    let d = values.cols
    guard keys.rows == n, keys.cols == d, queries.count == heads * d else {
      throw HeteroKVError.dimension(
        "near-data attention: \(heads) queries of \(queries.count) values over \(keys.rows)x"
          + "\(keys.cols) keys and \(n)x\(d) values")
    }
    guard n > 0 else { return .empty(heads: heads, headDim: d) }
    var weights = Kernels.scores(queries: queries, heads: heads, keys: keys, scale: scale)
    let (maxScores, sumExps) = exponentiate(&weights, heads: heads, rows: n)
    return normalised(
      Kernels.weightedSum(values: values, probabilities: weights, heads: heads), d: d,
      maxScores: maxScores, sumExps: sumExps)
  }

  /// Attention with given weights `[heads][n]` over the rows of `values` (the worker's
  /// approximate probabilities): per head Σ w·v / Σ w, max 0 and Σ w, so that the parts of a
  /// head merge in proportion to their weight. A head whose weights sum to 0 stays empty.
  public static func weighted(_ weights: [Float], heads: Int, values: HalfMatrix) throws
    -> AttentionPartial
  {
    let n = values.rows
    let d = values.cols
    guard weights.count == heads * n else {
      throw HeteroKVError.dimension(
        "near-data attention: \(weights.count) weights for \(heads) heads over \(n) rows")
    }
    let (maxScores, sumExps) = weightTotals(weights, heads: heads, rows: n)
    guard n > 0 else { return .empty(heads: heads, headDim: d) }
    return normalised(
      Kernels.weightedSum(values: values, probabilities: weights, heads: heads), d: d,
      maxScores: maxScores, sumExps: sumExps)
  }

  /// ``exact(queries:heads:keys:values:scale:)`` over rows in place: `keyRows[j]` and
  /// `valueRows[j]` point at the `cols` halves of row j (a memory node's pages), so nothing is
  /// copied; each row is read once for every head. The pointers must stay valid for the call.
  public static func exact(
    queries: [Float], heads: Int, keyRows: [UnsafePointer<UInt16>?],
    valueRows: [UnsafePointer<UInt16>?], cols d: Int, scale: Float
  ) throws -> AttentionPartial {
    let n = valueRows.count
    guard keyRows.count == n, d > 0, queries.count == heads * d else {
      throw HeteroKVError.dimension(
        "near-data attention: \(heads) queries of \(queries.count) values over \(keyRows.count) "
          + "key rows and \(n) value rows of \(d)")
    }
    guard n > 0 else { return .empty(heads: heads, headDim: d) }
    var weights = Kernels.scores(
      queries: queries, heads: heads, rows: keyRows, cols: d, scale: scale)
    let (maxScores, sumExps) = exponentiate(&weights, heads: heads, rows: n)
    return normalised(
      Kernels.weightedSum(rows: valueRows, cols: d, probabilities: weights, heads: heads), d: d,
      maxScores: maxScores, sumExps: sumExps)
  }

  /// ``weighted(_:heads:values:)`` over value rows in place (see
  /// ``exact(queries:heads:keyRows:valueRows:cols:scale:)``).
  public static func weighted(
    _ weights: [Float], heads: Int, valueRows: [UnsafePointer<UInt16>?], cols d: Int
  ) throws -> AttentionPartial {
    let n = valueRows.count
    guard weights.count == heads * n, d > 0 else {
      throw HeteroKVError.dimension(
        "near-data attention: \(weights.count) weights for \(heads) heads over \(n) rows")
    }
    let (maxScores, sumExps) = weightTotals(weights, heads: heads, rows: n)
    guard n > 0 else { return .empty(heads: heads, headDim: d) }
    return normalised(
      Kernels.weightedSum(rows: valueRows, cols: d, probabilities: weights, heads: heads), d: d,
      maxScores: maxScores, sumExps: sumExps)
  }

  /// Per head, max 0 and Σ w of its weights `[heads][rows]` (-inf and 0 for a head whose
  /// weights sum to 0, which stays empty).
  private static func weightTotals(_ weights: [Float], heads: Int, rows n: Int)
    -> (maxScores: [Float], sumExps: [Float])
  {
    var maxScores = [Float](repeating: -.infinity, count: heads)
    var sumExps = [Float](repeating: 0, count: heads)
    for h in 0..<heads {
      let total = weights[h * n..<(h + 1) * n].reduce(0, +)
      guard total > 0 else { continue }
      maxScores[h] = 0
      sumExps[h] = total
    }
    return (maxScores, sumExps)
  }

  /// Scores `[heads][rows]` turned into exp(score - max) in place; per head the max and Σ exp.
  private static func exponentiate(_ weights: inout [Float], heads: Int, rows n: Int)
    -> (maxScores: [Float], sumExps: [Float])
  {
    var maxScores = [Float](repeating: 0, count: heads)
    var sumExps = [Float](repeating: 0, count: heads)
    for h in 0..<heads {
      (maxScores[h], sumExps[h]) = Softmax.exponentiate(&weights, range: h * n..<(h + 1) * n)
    }
    return (maxScores, sumExps)
  }

  private static func normalised(
    _ sums: [Float], d: Int, maxScores: [Float], sumExps: [Float]
  ) -> AttentionPartial {
    var outputs = sums
    for h in 0..<sumExps.count {
      let inverse: Float = sumExps[h] > 0 ? 1 / sumExps[h] : 0
      for c in 0..<d { outputs[h * d + c] *= inverse }
    }
    return AttentionPartial(headDim: d, outputs: outputs, maxScores: maxScores, sumExps: sumExps)
  }
}

extension Kernels {
  /// scores[h * n + j] = scale · q[h] · row j, over fp16 rows of `cols` halves found through
  /// pointers; each row read once for every head.
  public static func scores(
    queries: [Float], heads: Int, rows: [UnsafePointer<UInt16>?], cols: Int, scale: Float
  ) -> [Float] {
    let n = rows.count
    return [Float](unsafeUninitializedCapacity: heads * n) { out, count in
      queries.withUnsafeBufferPointer { q in
        rows.withUnsafeBufferPointer { r in
          hkv_scores_f16_rows(
            q.baseAddress!, heads, r.baseAddress!, n, cols, scale, out.baseAddress!)
        }
      }
      count = heads * n
    }
  }

  /// out[h] = Σ_j probabilities[h * n + j] · row j, over fp16 rows found through pointers.
  public static func weightedSum(
    rows: [UnsafePointer<UInt16>?], cols: Int, probabilities: [Float], heads: Int
  ) -> [Float] {
    var out = [Float](repeating: 0, count: heads * cols)
    rows.withUnsafeBufferPointer { r in
      probabilities.withUnsafeBufferPointer { p in
        hkv_weighted_sum_rows_f16(r.baseAddress!, rows.count, cols, p.baseAddress!, heads, &out)
      }
    }
    return out
  }

  /// The fp16 rows at `rows` (each `cols` > 0 halves) copied contiguous, in order.
  public static func gatherRows(_ rows: [UnsafePointer<UInt16>?], cols: Int) -> HalfMatrix {
    let storage = [Float16](unsafeUninitializedCapacity: rows.count * cols) { out, count in
      out.withMemoryRebound(to: UInt16.self) { dst in
        hkv_gather_rows_f16(rows, rows.count, cols, dst.baseAddress!)
      }
      count = rows.count * cols
    }
    return HalfMatrix(exactly: storage, cols: max(cols, 1))
  }

  /// The fp16 rows at `rows` (each `cols` halves) copied contiguous into `destination`,
  /// which has room for `rows.count * cols` halves (a response buffer, say).
  public static func gatherRows(
    _ rows: [UnsafePointer<UInt16>?], cols: Int, into destination: UnsafeMutablePointer<UInt16>
  ) {
    hkv_gather_rows_f16(rows, rows.count, cols, destination)
  }
}
