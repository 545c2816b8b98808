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
}

/// StreamingLLM: attention sinks plus a window of recent tokens.
public struct StreamingLLMPolicy: AttentionPolicy {
  public var sinks: Int
  public init(sinks: Int = 4) { self.sinks = sinks }
  public var name: String { "streamingllm" }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    try IndependentHeads(
      layer.heads.map { head in
        let n = head.keys.rows
        let k = try tokenBudget(budget, contextLength: n)
        let s = min(sinks, k)
        let positions = Array(0..<s) + Array(max(s, n - (k - s))..<n)
        return EvictingHead(
          positions: positions, accumulated: .init(repeating: 0, count: positions.count),
          capacity: k, rule: .streaming(sinks: s), d: geometry.headDim,
          groupSize: geometry.groupSize)
      })
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
    let g = geometry.groupSize
    return try IndependentHeads(
      layer.heads.map { head in
        let n = head.keys.rows
        let k = try tokenBudget(budget, contextLength: n)
        let recent = k / 2
        let p = try ObservationAttention.probabilities(head, groupSize: g)
        let acc = ObservationAttention.columnSums(p, rows: p.count / n)
        let older = Array(acc[0..<(n - recent)])
        let heavy = AttentionPattern.top(older, k: k - recent)
        let positions = heavy + Array((n - recent)..<n)
        return EvictingHead(
          positions: positions, accumulated: positions.map { acc[$0] }, capacity: k,
          rule: .heavyHitters(recent: recent), d: geometry.headDim, groupSize: g)
      })
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
    return try IndependentHeads(
      layer.heads.map { head in
        let n = head.keys.rows
        let k = try tokenBudget(budget, contextLength: n)
        let p = try FullAttention.probabilities(
          queries: head.lastQuery(groupSize: g), heads: g, keys: head.keys)
        let positions = AttentionPattern.top(AttentionPattern.meanOfRows(p, rows: g), k: k)
        return EvictingHead(
          positions: positions, accumulated: .init(repeating: 0, count: positions.count),
          capacity: k, rule: .tova, d: geometry.headDim, groupSize: g)
      })
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
    return try IndependentHeads(
      layer.heads.map { head in
        let n = head.keys.rows
        let k = try tokenBudget(budget, contextLength: n)
        let window = min(head.observationQueries.count / (g * geometry.headDim), k, n)
        let p = try ObservationAttention.probabilities(head, groupSize: g)
        let votes = ObservationAttention.columnSums(p, rows: p.count / n)
        let pooled = AttentionPattern.smooth(votes[0..<(n - window)], width: poolWidth)
        let positions = AttentionPattern.top(pooled, k: k - window) + Array((n - window)..<n)
        return EvictingHead(
          positions: positions, accumulated: .init(repeating: 0, count: positions.count),
          capacity: Int.max, rule: .none, d: geometry.headDim, groupSize: g)
      })
  }
}
