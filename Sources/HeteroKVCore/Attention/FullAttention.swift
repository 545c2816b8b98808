/// Exact attention of a query group over fp16 keys and values: the reference every policy is
/// measured against, and the exact path of resident caches.
public enum FullAttention {
  /// The usual 1/sqrt(d) scale.
  public static func scale(headDim: Int) -> Float { 1 / Float(headDim).squareRoot() }

  /// Softmax probabilities `[heads][n]` of `queries` (`[heads][d]`) over `keys`.
  public static func probabilities(queries: [Float], heads: Int, keys: HalfMatrix) throws
    -> [Float]
  {
    try validate(queries: queries, heads: heads, keys: keys, values: nil)
    var p = Kernels.scores(
      queries: queries, heads: heads, keys: keys, scale: scale(headDim: keys.cols))
    _ = Softmax.normalizeRows(&p, heads: heads, n: keys.rows)
    return p
  }

  /// Attention outputs with their max and sum of exponentials, ready to merge.
  public static func attend(queries: [Float], heads: Int, keys: HalfMatrix, values: HalfMatrix)
    throws -> AttentionPartial
  {
    try attendWithProbabilities(queries: queries, heads: heads, keys: keys, values: values).0
  }

  /// Attention outputs as `attend` gives them, and the probabilities `[heads][n]` they
  /// weighted the values by.
  public static func attendWithProbabilities(
    queries: [Float], heads: Int, keys: HalfMatrix, values: HalfMatrix
  ) throws -> (AttentionPartial, [Float]) {
    try validate(queries: queries, heads: heads, keys: keys, values: values)
    var p = Kernels.scores(
      queries: queries, heads: heads, keys: keys, scale: scale(headDim: keys.cols))
    let (m, s) = Softmax.normalizeRows(&p, heads: heads, n: keys.rows)
    let out = Kernels.weightedSum(values: values, probabilities: p, heads: heads)
    return (AttentionPartial(headDim: values.cols, outputs: out, maxScores: m, sumExps: s), p)
  }

  static func validate(queries: [Float], heads: Int, keys: HalfMatrix, values: HalfMatrix?)
    throws
  {
    guard keys.rows > 0 else {
      throw HeteroKVError(.emptyContext, "attention over an empty context (0 keys)")
    }
    guard heads > 0, queries.count == heads * keys.cols else {
      throw HeteroKVError.dimension(
        "queries hold \(queries.count) values, expected \(heads) heads x \(keys.cols) dims")
    }
    if let values {
      guard values.rows == keys.rows, values.cols == keys.cols else {
        throw HeteroKVError.dimension(
          "values are \(values.rows)x\(values.cols) but keys are \(keys.rows)x\(keys.cols)")
      }
    }
    try requireFinite(queries, "query")
  }
}
