import HeteroKVCore
import HeteroKVEngineClient
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
  /// Set once a `SharedPrefillCache` fed this cache the prompt without its attention.
  var prefilledElsewhere = false
  /// Where the decode steps' cache time went, summed over layers and steps since the last
  /// ``resetDecodeBreakdown()``.
  public private(set) var decodeBreakdown = DecodeBreakdown()

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
      let clock = ContinuousClock()
      let start = clock.now
      try await engine.append(
        ref, layer: layer, tokens: 1, keys: halfKeys, values: halfValues, observation: nil)
      let appended = clock.now
      let result = try await engine.attend(
        ref, layer: layer, queries: queries, withSelection: false)
      decodeBreakdown.layerCalls += 1
      decodeBreakdown.append += (appended - start).inSeconds
      decodeBreakdown.attend += (clock.now - appended).inSeconds
      decodeBreakdown.phases += result.timings
      return result.output
    }
    try FullKVCache.append(keys, to: &prefillKeys[layer], kvHeads: c.kvHeads, headDim: c.headDim)
    try FullKVCache.append(
      values, to: &prefillValues[layer], kvHeads: c.kvHeads, headDim: c.headDim)
    guard !prefilledElsewhere else {
      throw HeteroKVError(
        .failedPrecondition, "a prompt chunk after a prefill attended by another cache")
    }
    let out = try FullKVCache.causalAttention(
      queries: queries, tokens: tokens, keys: prefillKeys[layer], values: prefillValues[layer],
      queryHeads: c.queryHeads)
    try await appendPrompt(
      layer: layer, keys: halfKeys, values: halfValues, queries: queries, tokens: tokens)
    return out
  }

  /// Starts the decode breakdown afresh (after a first step that ended the prefill).
  public mutating func resetDecodeBreakdown() { decodeBreakdown = DecodeBreakdown() }

  /// Appends a prompt chunk whose attention another cache computes (`SharedPrefillCache`):
  /// the K/V and the chunk's last queries go to the engine, nothing is attended here.
  public mutating func appendPromptOnly(
    layer: Int, keys: [Float], values: [Float], queries: [Float], tokens: Int
  ) async throws {
    prefilledElsewhere = true
    try await appendPrompt(
      layer: layer, keys: keys.map { Float16($0) }, values: values.map { Float16($0) },
      queries: queries, tokens: tokens)
  }

  private func appendPrompt(
    layer: Int, keys: [Float16], values: [Float16], queries: [Float], tokens: Int
  ) async throws {
    let rows = min(observationRows, tokens)
    let width = configuration.queryHeads * configuration.headDim
    try await engine.append(
      ref, layer: layer, tokens: tokens, keys: keys, values: values,
      observation: Array(queries[((tokens - rows) * width)...]))
  }
}

/// One prefill for several caches: `primary` (usually the full cache) attends the prompt, and
/// every follower, a HeteroKV sequence, receives the same K/V. The prompt's attention is exact
/// on every engine cache anyway, so the K/V are identical and comparing policies costs one
/// prefill instead of one per policy. Decode each cache on its own afterwards.
public struct SharedPrefillCache<Primary: ModelKVCache>: ModelKVCache {
  public var primary: Primary
  public var followers: [EngineKVCache]

  public init(primary: Primary, followers: [EngineKVCache]) {
    self.primary = primary
    self.followers = followers
  }

  public mutating func appendAndAttend(
    layer: Int, keys: [Float], values: [Float], queries: [Float], tokens: Int
  ) async throws -> [Float] {
    let out = try await primary.appendAndAttend(
      layer: layer, keys: keys, values: values, queries: queries, tokens: tokens)
    for i in followers.indices {
      try await followers[i].appendPromptOnly(
        layer: layer, keys: keys, values: values, queries: queries, tokens: tokens)
    }
    return out
  }
}

/// Where a decode step's time in the cache goes, summed over layer calls: the engine's append
/// and attend as the model waits for them, and the worker's own phases of the attend.
public struct DecodeBreakdown: Sendable, Hashable {
  /// Layer calls summed (layers x steps).
  public var layerCalls = 0
  /// Seconds in `append` (coding the token's keys, queueing its rows).
  public var append = 0.0
  /// Seconds in `attend`, from the call to the answer.
  public var attend = 0.0
  /// The worker's phases of those attends (compute, plan, fan-out, merge).
  public var phases = StepTimings()

  public init() {}

  /// Per layer call: the cache's time minus the worker's local compute (scoring, selection,
  /// resident caches) — what the issue calls the per-layer overhead.
  public var overheadPerLayer: Double {
    layerCalls == 0 ? 0 : (append + attend - phases.compute) / Double(layerCalls)
  }
}
