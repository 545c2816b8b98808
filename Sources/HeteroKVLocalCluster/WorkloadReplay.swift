import HeteroKVCore
import HeteroKVWorker

/// Plays an attention workload through an engine the way an inference engine would: every
/// layer's prefill in chunks (with the observation window's queries on the last chunk), then
/// per decode step and layer, the new token's K/V and the query group. Outputs are compared
/// with full attention over the same fp16 K/V.
public struct WorkloadReplay: Sendable {
  /// The layers, generated once and kept for the reference.
  public let layers: [LayerTrace]
  public let geometry: ModelGeometry
  public let decodeSteps: Int

  /// Generates the workload's layers; `progress(done, total)` after each.
  public init(_ workload: any AttentionWorkload, progress: (Int, Int) -> Void = { _, _ in }) throws
  {
    geometry = workload.geometry
    decodeSteps = workload.decodeSteps
    var layers: [LayerTrace] = []
    for l in 0..<workload.geometry.layers {
      layers.append(try workload.layer(l))
      progress(l + 1, workload.geometry.layers)
    }
    self.layers = layers
  }

  /// Prefill tokens.
  public var contextLength: Int { layers.first?.heads.first?.keys.rows ?? 0 }

  /// The same tensors as a workload, for the evaluation harness (no calibration sample).
  public var workload: any AttentionWorkload { ReplayedWorkload(replay: self) }

  /// Token-major K or V rows `[tokens][kvHeads][d]` of tokens `range` of a layer.
  func interleave(_ layer: LayerTrace, _ range: Range<Int>, values: Bool) -> [Float16] {
    let d = geometry.headDim
    let heads = layer.heads.count
    var out = [Float16](repeating: 0, count: range.count * heads * d)
    for (h, head) in layer.heads.enumerated() {
      let m = values ? head.values : head.keys
      m.storage.withUnsafeBufferPointer { src in
        for (i, t) in range.enumerated() {
          for c in 0..<d { out[(i * heads + h) * d + c] = src[t * d + c] }
        }
      }
    }
    return out
  }

  /// Observation queries `[rows][queryHeads][d]` of a layer.
  func observation(_ layer: LayerTrace) -> [Float] {
    let d = geometry.headDim
    let g = geometry.groupSize
    let rows = layer.heads[0].observationQueries.count / (g * d)
    var out = [Float](repeating: 0, count: rows * geometry.queryHeads * d)
    for (h, head) in layer.heads.enumerated() {
      for r in 0..<rows {
        for i in 0..<(g * d) {
          out[(r * geometry.queryHeads + h * g) * d + i] = head.observationQueries[r * g * d + i]
        }
      }
    }
    return out
  }

  /// Appends every layer's prefill in chunks of `chunk` tokens; `progress(done, total)` in
  /// tokens over all layers.
  public func prefill(
    _ engine: any KVCacheEngine, _ ref: SequenceRef, chunk: Int = 16384,
    progress: (Int, Int) -> Void = { _, _ in }
  ) async throws {
    let n = contextLength
    let total = n * layers.count
    var done = 0
    for layer in layers {
      var start = 0
      while start < n {
        let end = min(n, start + chunk)
        try await engine.append(
          ref, layer: layer.layer, tokens: end - start,
          keys: interleave(layer, start..<end, values: false),
          values: interleave(layer, start..<end, values: true),
          observation: end == n ? observation(layer) : nil)
        done += end - start
        progress(done, total)
        start = end
      }
    }
  }

  /// What a decode run measured.
  public struct DecodeReport: Sendable, Codable {
    /// Mean ‖o − o_full‖ / ‖o_full‖ over query heads, layers and steps.
    public var meanRelativeError: Double
    /// Largest relative error seen.
    public var maxRelativeError: Double
    /// Mean share of the true attention mass held by the tokens each output used.
    public var meanMassRecall: Double
    public var steps: Int
    /// Seconds inside the engine's calls (appends and attends), all layers and steps.
    public var engineSeconds: Double
    /// Bytes the steps moved between worker and memory tier (attention traffic only).
    public var bytesMoved: Int
    /// Outputs of the last step, per layer `[queryHeads][d]` (for comparisons).
    public var lastOutputs: [[Float]]
    /// Every step's outputs, per step and layer, when asked for (`keepOutputs`).
    public var stepOutputs: [[[Float]]] = []
  }

  /// Runs `steps` decode steps (at most the workload's) through `engine`, measuring each
  /// output against full attention when `measure`, keeping every step's outputs when
  /// `keepOutputs`, and calling `beforeStep(t)` before step `t` (tests break things there).
  public func decode(
    _ engine: any KVCacheEngine, _ ref: SequenceRef, steps: Int? = nil, measure: Bool = true,
    keepOutputs: Bool = false, progress: (Int, Int) -> Void = { _, _ in },
    beforeStep: (Int) async throws -> Void = { _ in }
  ) async throws -> DecodeReport {
    let steps = min(steps ?? decodeSteps, decodeSteps)
    let g = geometry.groupSize
    let d = geometry.headDim
    // The full K/V each reference step attends over, grown by one token per step.
    var fullKeys = layers.map { $0.heads.map(\.keys) }
    var fullValues = layers.map { $0.heads.map(\.values) }
    var errorSum = 0.0
    var errorMax = 0.0
    var recallSum = 0.0
    var samples = 0
    var seconds = 0.0
    var moved = 0
    var last: [[Float]] = []
    var everyStep: [[[Float]]] = []
    let clock = ContinuousClock()
    for t in 0..<steps {
      if t > 0 && keepOutputs { everyStep.append(last) }
      try await beforeStep(t)
      last = []
      for (l, layer) in layers.enumerated() {
        let keys = layer.heads.flatMap { $0.decodeKeys[t] }
        let values = layer.heads.flatMap { $0.decodeValues[t] }
        let queries = layer.heads.flatMap { $0.decodeQueries[t] }
        let started = clock.now
        try await engine.append(
          ref, layer: l, tokens: 1, keys: keys.map { Float16($0) },
          values: values.map { Float16($0) }, observation: nil)
        let result = try await engine.attend(
          ref, layer: l, queries: queries, withSelection: measure)
        let elapsed = clock.now - started
        seconds += elapsed.inSeconds
        moved += result.bytesMoved
        last.append(result.output)
        guard measure else { continue }
        for h in 0..<layer.heads.count {
          try fullKeys[l][h].append(layer.heads[h].decodeKeys[t])
          try fullValues[l][h].append(layer.heads[h].decodeValues[t])
          let q = Array(queries[(h * g * d)..<((h + 1) * g * d)])
          let reference = try FullAttention.attend(
            queries: q, heads: g, keys: fullKeys[l][h], values: fullValues[l][h])
          let p = try FullAttention.probabilities(queries: q, heads: g, keys: fullKeys[l][h])
          let n = fullKeys[l][h].rows
          for a in 0..<g {
            let o = result.output[((h * g + a) * d)..<((h * g + a + 1) * d)]
            let r = reference.outputs[(a * d)..<((a + 1) * d)]
            let e = Double(FidelityAccumulator.relativeL2(o, r))
            errorSum += e
            errorMax = max(errorMax, e)
            if let kept = result.selections?[h * g + a] {
              var mass: Float = 0
              for j in kept where Int(j) < n { mass += p[a * n + Int(j)] }
              recallSum += Double(min(mass, 1))
            } else {
              recallSum += 1
            }
            samples += 1
          }
        }
      }
      progress(t + 1, steps)
    }
    if keepOutputs && steps > 0 { everyStep.append(last) }
    return DecodeReport(
      meanRelativeError: samples > 0 ? errorSum / Double(samples) : 0, maxRelativeError: errorMax,
      meanMassRecall: samples > 0 ? recallSum / Double(samples) : 0, steps: steps,
      engineSeconds: seconds, bytesMoved: moved, lastOutputs: last, stepOutputs: everyStep)
  }
}

/// A replay's layers as an ``AttentionWorkload``: what was generated once is evaluated again
/// without regenerating it.
struct ReplayedWorkload: AttentionWorkload {
  let replay: WorkloadReplay

  var geometry: ModelGeometry { replay.geometry }
  var contextLength: Int { replay.contextLength }
  var decodeSteps: Int { replay.decodeSteps }
  var observationWindow: Int {
    let g = replay.geometry
    return (replay.layers.first?.heads.first?.observationQueries.count ?? 0)
      / max(1, g.groupSize * g.headDim)
  }
  var summary: String { "the replayed workload (\(contextLength) tokens)" }
  func layer(_ index: Int) throws -> LayerTrace { replay.layers[index] }
  func calibrationSample() throws -> (any AttentionWorkload)? { nil }
}
