/// Full attention over the fp16 cache: the reference, as a policy.
public struct FullAttentionPolicy: AttentionPolicy {
  public init() {}
  public var name: String { "full" }

  struct Head: HeadPolicyState {
    var tokens: Int
    let d: Int
    let groupSize: Int
    mutating func step(_ input: HeadStepInput) throws -> PolicyStepResult {
      tokens = input.keys.rows
      let out = try FullAttention.attend(
        queries: input.queries, heads: groupSize, keys: input.keys, values: input.values)
      return PolicyStepResult(outputs: out.outputs, attended: nil, bytesMoved: 0)
    }
    var residentBytes: Int { kvBytes(tokens: tokens, headDim: d) }
  }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    IndependentHeads(
      layer.heads.map {
        Head(tokens: $0.keys.rows, d: geometry.headDim, groupSize: geometry.groupSize)
      })
  }
}

/// A cache that keeps a set of positions resident (fp16 K and V) and evicts by a rule; the
/// shared shape of StreamingLLM, H2O, TOVA and SnapKV.
struct EvictingHead: HeadPolicyState {
  enum Rule {
    /// Keep sinks and the most recent tokens.
    case streaming(sinks: Int)
    /// Keep the highest accumulated attention outside a recent window.
    case heavyHitters(recent: Int)
    /// Evict the token with the lowest attention at the current step.
    case tova
    /// Never evict during decode.
    case none
  }
  var positions: [Int]
  var accumulated: [Float]
  let capacity: Int
  let rule: Rule
  let d: Int
  let groupSize: Int

  mutating func step(_ input: HeadStepInput) throws -> PolicyStepResult {
    let newest = input.keys.rows - 1
    positions.append(newest)
    accumulated.append(0)
    let gathered = (input.keys.gather(positions), input.values.gather(positions))
    var p = Kernels.scores(
      queries: input.queries, heads: groupSize, keys: gathered.0,
      scale: FullAttention.scale(headDim: d))
    _ = Softmax.normalizeRows(&p, heads: groupSize, n: positions.count)
    let outputs = Kernels.weightedSum(values: gathered.1, probabilities: p, heads: groupSize)
    let attendedSet = positions.map(Int32.init)
    let current = ObservationAttention.columnSums(p, rows: groupSize)
    for i in positions.indices { accumulated[i] += current[i] }
    if positions.count > capacity { evict(current: current) }
    return PolicyStepResult(
      outputs: outputs, attended: Array(repeating: attendedSet, count: groupSize), bytesMoved: 0)
  }

  mutating func evict(current: [Float]) {
    var victim: Int?
    switch rule {
    case .streaming(let sinks):
      victim = positions.count > sinks ? sinks : nil
    case .heavyHitters(let recent):
      let candidates = positions.indices.dropLast(recent)
      victim = candidates.min { accumulated[$0] < accumulated[$1] }
    case .tova:
      victim = positions.indices.min { current[$0] < current[$1] }
    case .none:
      victim = nil
    }
    if let victim {
      positions.remove(at: victim)
      accumulated.remove(at: victim)
    }
  }

  var residentBytes: Int { kvBytes(tokens: positions.count, headDim: d) }

  /// One evicting head per KV head of a layer: `start` picks each head's initial positions
  /// (and optional accumulated scores) from its trace, context length n and token budget k.
  static func layer(
    _ layer: LayerTrace, geometry: ModelGeometry, budget: Double, rule: (Int) -> Rule,
    capacity: (Int) -> Int = { $0 },
    start: (HeadTrace, _ n: Int, _ k: Int) throws -> (positions: [Int], accumulated: [Float]?)
  ) throws -> IndependentHeads<EvictingHead> {
    try IndependentHeads(
      layer.heads.map { head in
        let n = head.keys.rows
        let k = try tokenBudget(budget, contextLength: n)
        let (positions, accumulated) = try start(head, n, k)
        return EvictingHead(
          positions: positions,
          accumulated: accumulated ?? .init(repeating: 0, count: positions.count),
          capacity: capacity(k), rule: rule(k), d: geometry.headDim,
          groupSize: geometry.groupSize)
      })
  }
}

/// StreamingLLM: attention sinks plus a window of recent tokens.
public struct StreamingLLMPolicy: AttentionPolicy {
  public var sinks: Int
  public init(sinks: Int = 4) { self.sinks = sinks }
  public var name: String { "streamingllm" }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    try EvictingHead.layer(
      layer, geometry: geometry, budget: budget, rule: { .streaming(sinks: min(sinks, $0)) }
    ) { _, n, k in
      let s = min(sinks, k)
      return (Array(0..<s) + Array(max(s, n - (k - s))..<n), nil)
    }
  }
}

/// H2O: heavy hitters by accumulated attention (seeded from the prefill's observation window)
/// plus recent tokens, half the budget each.
public struct H2OPolicy: AttentionPolicy {
  public init() {}
  public var name: String { "h2o" }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    try EvictingHead.layer(
      layer, geometry: geometry, budget: budget, rule: { .heavyHitters(recent: $0 / 2) }
    ) { head, n, k in
      let recent = k / 2
      let p = try ObservationAttention.probabilities(head, groupSize: geometry.groupSize)
      let acc = ObservationAttention.columnSums(p, rows: p.count / n)
      let heavy = AttentionPattern.top(Array(acc[0..<(n - recent)]), k: k - recent)
      let positions = heavy + Array((n - recent)..<n)
      return (positions, positions.map { acc[$0] })
    }
  }
}

/// TOVA: keep the tokens the current query attends to most; each step evicts the lowest.
public struct TOVAPolicy: AttentionPolicy {
  public init() {}
  public var name: String { "tova" }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    let g = geometry.groupSize
    return try EvictingHead.layer(layer, geometry: geometry, budget: budget, rule: { _ in .tova }) {
      head, _, k in
      let p = try FullAttention.probabilities(
        queries: head.lastQuery(groupSize: g), heads: g, keys: head.keys)
      return (AttentionPattern.top(AttentionPattern.meanOfRows(p, rows: g), k: k), nil)
    }
  }
}

/// SnapKV: the observation window votes (summed attention, pooled width 7) for the prefix
/// tokens to keep; the window itself is kept; decode tokens are appended.
public struct SnapKVPolicy: AttentionPolicy {
  public var poolWidth: Int
  public init(poolWidth: Int = 7) { self.poolWidth = poolWidth }
  public var name: String { "snapkv" }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    let g = geometry.groupSize
    return try EvictingHead.layer(
      layer, geometry: geometry, budget: budget, rule: { _ in .none }, capacity: { _ in .max }
    ) { head, n, k in
      let window = min(head.observationQueries.count / (g * geometry.headDim), k, n)
      let p = try ObservationAttention.probabilities(head, groupSize: g)
      let votes = ObservationAttention.columnSums(p, rows: p.count / n)
      let pooled = AttentionPattern.smooth(votes[0..<(n - window)], width: poolWidth)
      return (AttentionPattern.top(pooled, k: k - window) + Array((n - window)..<n), nil)
    }
  }
}
