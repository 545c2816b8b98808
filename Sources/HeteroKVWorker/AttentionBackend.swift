import HeteroKVEngineClient
import HeteroKVCore

/// One KV head's share of a decode step's compute on the worker.
public enum HeadComputation: Sendable {
  /// Score every token from the key index and keep the tau-mass prefix per query head.
  case select(
    index: ApproximateKeyIndex, queries: [Float], tau: Float, cap: Int?, scope: SelectionScope)
  /// Exact attention over a resident compressed cache.
  case attend(cache: CompressedHeadCache, queries: [Float])
  /// Both: exact attention over the cache, and the tau-mass selection from the key codes that
  /// names what the cache lacks.
  case recall(
    index: ApproximateKeyIndex, cache: CompressedHeadCache, queries: [Float], tau: Float,
    scope: SelectionScope)
}

/// What a head's computation produced.
public enum HeadComputationResult: Sendable {
  /// Approximate scaled scores `[groupSize][n]` and the kept set of each query head.
  case selected(scores: [Float], selections: [TauMassSelection])
  /// Exact attention over the cache, and the probability mass each of its rows drew (summed
  /// over the query group), which orders the cache's evictions.
  case attended(AttentionPartial, mass: [Float])
  /// What `recall` produced: the cache's attention and drawn mass, and the selection.
  case recalled(
    AttentionPartial, mass: [Float], scores: [Float], selections: [TauMassSelection])
}

/// Where the worker's numeric work runs. A decode step hands the backend every KV head of a
/// layer at once: scoring the key codes, tau-mass selection, and exact attention over the
/// resident caches. Network work (near-data attention on memory nodes) stays outside.
///
/// `CPUAttentionBackend` runs the SIMD kernels of HeteroKVCore with one head per core. A GPU
/// backend would hold the key codes and caches in device memory and run the same three steps
/// as kernels; it plugs in here without touching the rest of the worker.
public protocol AttentionBackend: Sendable {
  /// The backend's name in stats and logs.
  var name: String { get }
  /// Runs the heads' computations; results in the same order.
  func run(_ heads: [HeadComputation], groupSize: Int, scale: Float) throws
    -> [HeadComputationResult]
  /// Attention of a query group over rows the worker still holds itself (not yet stored on a
  /// memory node): exact (scale 1/√d) when `keys` are given, else weighted by `weights`,
  /// per query head one weight per token.
  func localPartial(
    queries: [Float], heads: Int, keys: HalfMatrix?, values: HalfMatrix, tokens: [[Int]],
    weights: [[Float]]
  ) throws -> AttentionPartial
}

/// The CPU backend: HeteroKVCore's vectorized kernels, KV heads spread over all cores.
public struct CPUAttentionBackend: AttentionBackend {
  public init() {}

  public var name: String { Kernels.isVectorized ? "cpu-simd" : "cpu-portable" }

  public func run(_ heads: [HeadComputation], groupSize g: Int, scale: Float) throws
    -> [HeadComputationResult]
  {
    try parallelMap(heads.count) { h in
      switch heads[h] {
      case .select(let index, let queries, let tau, let cap, let scope):
        let scores = try index.scores(queries: queries, heads: g, scale: scale)
        let step = try HCAttentionStep(tau: tau, cap: cap, scope: scope)
        return .selected(
          scores: scores, selections: try step.select(approximateScores: scores, heads: g))
      case .attend(let cache, let queries):
        let (partial, mass) = try cache.attendWeighing(queries: queries, heads: g)
        return .attended(partial, mass: mass)
      case .recall(let index, let cache, let queries, let tau, let scope):
        let scores = try index.scores(queries: queries, heads: g, scale: scale)
        let selections = try HCAttentionStep(tau: tau, scope: scope).select(
          approximateScores: scores, heads: g)
        let (partial, mass) = try cache.attendWeighing(queries: queries, heads: g)
        return .recalled(partial, mass: mass, scores: scores, selections: selections)
      }
    }
  }

  public func localPartial(
    queries: [Float], heads: Int, keys: HalfMatrix?, values: HalfMatrix, tokens: [[Int]],
    weights: [[Float]]
  ) throws -> AttentionPartial {
    let d = values.cols
    var result = AttentionPartial.empty(heads: heads, headDim: d)
    let scale = FullAttention.scale(headDim: d)
    for h in 0..<heads where !tokens[h].isEmpty {
      let rows = values.gather(tokens[h])
      let part =
        if let keys {
          try AttentionPartial.exact(
            queries: Array(queries[h * d..<(h + 1) * d]), heads: 1, keys: keys.gather(tokens[h]),
            values: rows, scale: scale)
        } else {
          try AttentionPartial.weighted(weights[h], heads: 1, values: rows)
        }
      result.outputs.replaceSubrange(h * d..<(h + 1) * d, with: part.outputs)
      result.maxScores[h] = part.maxScores[0]
      result.sumExps[h] = part.sumExps[0]
    }
    return result
  }
}
