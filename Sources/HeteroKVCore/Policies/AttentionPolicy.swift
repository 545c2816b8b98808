/// What a decode step hands each KV head: the query group and the whole context so far (the
/// new token included). The context stands for the memory tier: policies read the rows they
/// would fetch from it and count those bytes.
public struct HeadStepInput: Sendable {
  /// Decode step, 0-based.
  public var step: Int
  /// The query group `[groupSize][d]`.
  public var queries: [Float]
  /// All keys so far, `[n + step + 1][d]`.
  public var keys: HalfMatrix
  /// All values so far.
  public var values: HalfMatrix

  public init(step: Int, queries: [Float], keys: HalfMatrix, values: HalfMatrix) {
    self.step = step
    self.queries = queries
    self.keys = keys
    self.values = values
  }
}

/// What a policy produced for one KV head at one decode step.
public struct PolicyStepResult: Sendable {
  /// Outputs `[groupSize][d]`.
  public var outputs: [Float]
  /// Per query head, the positions whose values entered its output; nil when every token did
  /// (full attention over a quantized cache).
  public var attended: [[Int32]]?
  /// Bytes that crossed between worker and memory tier for this head at this step.
  public var bytesMoved: Int
}

/// A policy's state for one layer of one sequence after prefill.
public protocol PolicyLayerState {
  /// Runs decode step `t` for every KV head of the layer (inputs indexed by KV head).
  mutating func step(_ inputs: [HeadStepInput]) throws -> [PolicyStepResult]
  /// Bytes resident on the worker now.
  var residentBytes: Int { get }
  /// Steps at which this layer fetched caches from the memory tier outside the attention
  /// path (HeteroCache refreshes).
  var retrievalSteps: Int { get }
}

extension PolicyLayerState {
  public var retrievalSteps: Int { 0 }
}

/// A KV-cache policy evaluated by the fidelity harness at a memory budget.
public protocol AttentionPolicy: Sendable {
  /// The name in reports (`hcattention`, `h2o`, ...).
  var name: String { get }
  /// Prepares the policy's state for one layer after its prefill.
  func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
}

/// A policy state made of independent per-head states.
public protocol HeadPolicyState {
  mutating func step(_ input: HeadStepInput) throws -> PolicyStepResult
  var residentBytes: Int { get }
}

/// Runs independent head states side by side.
public struct IndependentHeads<State: HeadPolicyState>: PolicyLayerState {
  public var heads: [State]
  public init(_ heads: [State]) { self.heads = heads }
  public mutating func step(_ inputs: [HeadStepInput]) throws -> [PolicyStepResult] {
    guard inputs.count == heads.count else {
      throw HeteroKVError.dimension("step has \(inputs.count) heads, state has \(heads.count)")
    }
    return try inputs.indices.map { try heads[$0].step(inputs[$0]) }
  }
  public var residentBytes: Int { heads.reduce(0) { $0 + $1.residentBytes } }
}

/// Attention of the prefill's observation window over the prefill keys, causally masked:
/// `[window][groupSize][n]` probabilities. Several baselines vote with it.
public enum ObservationAttention {
  public static func probabilities(_ head: HeadTrace, groupSize: Int) throws -> [Float] {
    let d = head.keys.cols
    let n = head.keys.rows
    let rows = head.observationQueries.count / d
    let window = rows / groupSize
    var p = Kernels.scores(
      queries: head.observationQueries, heads: rows, keys: head.keys,
      scale: FullAttention.scale(headDim: d))
    for r in 0..<rows {
      let position = n - window + r / groupSize
      for j in (position + 1)..<max(position + 1, n) { p[r * n + j] = -.infinity }
    }
    _ = Softmax.normalizeRows(&p, heads: rows, n: n)
    return p
  }

  /// Σ over rows of a `[rows][n]` matrix.
  public static func columnSums(_ p: [Float], rows: Int) -> [Float] {
    AttentionPattern.meanOfRows(p, rows: rows).map { $0 * Float(rows) }
  }
}

/// Exact attention of a query group over chosen positions of the context.
func attend(positions: [Int], input: HeadStepInput, heads: Int) throws -> [Float] {
  try FullAttention.attend(
    queries: input.queries, heads: heads, keys: input.keys.gather(positions),
    values: input.values.gather(positions)
  ).outputs
}

/// fp16 K+V bytes of `tokens` rows of dim `d`.
func kvBytes(tokens: Int, headDim d: Int) -> Int { tokens * d * 2 * 2 }

/// Tokens a resident cache may hold at a budget share of the prefill.
func tokenBudget(_ budget: Double, contextLength n: Int) throws -> Int {
  guard budget > 0, budget <= 1 else {
    throw HeteroKVError.invalid("memory budget must be in (0, 1], got \(budget)")
  }
  return max(1, Int(budget * Double(n)))
}
