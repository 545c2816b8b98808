import CHeteroKVKernels

// The one near-data partial attention: what a memory node computes over the kept rows it
// holds, and what the worker computes over the kept rows it still holds. Both gather the
// rows contiguous first, then score (exact mode) or weigh them for a group of query heads
// in one pass of the kernels.

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
    var maxScores = [Float](repeating: 0, count: heads)
    var sumExps = [Float](repeating: 0, count: heads)
    for h in 0..<heads {
      (maxScores[h], sumExps[h]) = Softmax.exponentiate(&weights, range: h * n..<(h + 1) * n)
    }
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
    var maxScores = [Float](repeating: -.infinity, count: heads)
    var sumExps = [Float](repeating: 0, count: heads)
    for h in 0..<heads {
      let total = weights[h * n..<(h + 1) * n].reduce(0, +)
      guard total > 0 else { continue }
      maxScores[h] = 0
      sumExps[h] = total
    }
    guard n > 0 else { return .empty(heads: heads, headDim: d) }
    return normalised(
      Kernels.weightedSum(values: values, probabilities: weights, heads: heads), d: d,
      maxScores: maxScores, sumExps: sumExps)
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
  /// The fp16 rows at `rows` (each `cols` > 0 halves) copied contiguous, in order.
  public static func gatherRows(_ rows: [UnsafePointer<UInt16>?], cols: Int) -> HalfMatrix {
    let storage = [Float16](unsafeUninitializedCapacity: rows.count * cols) { out, count in
      out.withMemoryRebound(to: UInt16.self) { dst in
        hkv_gather_rows_f16(rows, rows.count, cols, dst.baseAddress)
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
