import HeteroKVCore
import HeteroKVModel
import HeteroKVWorker

/// A model's KV cache served by HeteroKV through the engine API (in process or over gRPC).
/// Prefill chunks are attended here, exactly and causally over the prompt so far, as an
/// inference engine does on its accelerator, and their K/V (with the chunk's last queries for
/// head profiling) are appended to the sequence; each decode token is appended and attended
/// by the worker.
public struct EngineKVCache: ModelKVCache {
  let engine: any KVCacheEngine
  let ref: SequenceRef
  let configuration: LlamaConfiguration
  /// The prompt's K/V per layer until decoding starts (for prefill attention).
  var prefillKeys: [[HalfMatrix]]
  var prefillValues: [[HalfMatrix]]
  /// Query rows kept for profiling from the end of each prefill chunk.
  public var observationRows = 32

  public init(engine: any KVCacheEngine, ref: SequenceRef, configuration: LlamaConfiguration) {
    self.engine = engine
    self.ref = ref
    self.configuration = configuration
    prefillKeys = Array(
      repeating: Array(
        repeating: HalfMatrix(cols: configuration.headDim), count: configuration.kvHeads),
      count: configuration.layers)
    prefillValues = prefillKeys
  }

  public mutating func appendAndAttend(
    layer: Int, keys: [Float], values: [Float], queries: [Float], tokens: Int
  ) async throws -> [Float] {
    let c = configuration
    let halfKeys = keys.map { Float16($0) }
    let halfValues = values.map { Float16($0) }
    guard tokens > 1 else {
      try await engine.append(
        ref, layer: layer, tokens: 1, keys: halfKeys, values: halfValues, observation: nil)
      return try await engine.attend(ref, layer: layer, queries: queries, withSelection: false)
        .output
    }
    try FullKVCache.append(keys, to: &prefillKeys[layer], kvHeads: c.kvHeads, headDim: c.headDim)
    try FullKVCache.append(
      values, to: &prefillValues[layer], kvHeads: c.kvHeads, headDim: c.headDim)
    let out = try FullKVCache.causalAttention(
      queries: queries, tokens: tokens, keys: prefillKeys[layer], values: prefillValues[layer],
      queryHeads: c.queryHeads)
    let rows = min(observationRows, tokens)
    let width = c.queryHeads * c.headDim
    try await engine.append(
      ref, layer: layer, tokens: tokens, keys: halfKeys, values: halfValues,
      observation: Array(queries[((tokens - rows) * width)...]))
    return out
  }
}
