/// One KV head's tensors for one layer: prefill K/V, the last prefill queries (the observation
/// window several policies vote with), and per decode step the query group and the new K/V.
public struct HeadTrace: Sendable {
  /// Prefill keys, post-RoPE, `[n][d]`.
  public var keys: HalfMatrix
  /// Prefill values `[n][d]`.
  public var values: HalfMatrix
  /// The last `window` prefill queries of the group, oldest first: `[window][groupSize][d]`.
  public var observationQueries: [Float]
  /// Per decode step, the group's queries `[groupSize][d]`.
  public var decodeQueries: [[Float]]
  /// Per decode step, the new token's key `[d]`.
  public var decodeKeys: [[Float]]
  /// Per decode step, the new token's value `[d]`.
  public var decodeValues: [[Float]]

  public init(
    keys: HalfMatrix, values: HalfMatrix, observationQueries: [Float], decodeQueries: [[Float]],
    decodeKeys: [[Float]], decodeValues: [[Float]]
  ) {
    self.keys = keys
    self.values = values
    self.observationQueries = observationQueries
    self.decodeQueries = decodeQueries
    self.decodeKeys = decodeKeys
    self.decodeValues = decodeValues
  }

  /// The last prefill query group `[groupSize][d]`.
  public func lastQuery(groupSize: Int) -> [Float] {
    let size = groupSize * keys.cols
    return Array(observationQueries[(observationQueries.count - size)...])
  }
}

/// All KV heads of one layer.
public struct LayerTrace: Sendable {
  public var layer: Int
  public var heads: [HeadTrace]
  public init(layer: Int, heads: [HeadTrace]) {
    self.layer = layer
    self.heads = heads
  }
}

/// A source of attention tensors for the fidelity harness: the synthetic generator or a
/// trace dumped from a real model. Layers are produced one at a time to bound memory.
public protocol AttentionWorkload: Sendable {
  /// Geometry; `layers` is the number of layers this workload provides.
  var geometry: ModelGeometry { get }
  /// Prefill tokens.
  var contextLength: Int { get }
  /// Decode steps.
  var decodeSteps: Int { get }
  /// Prefill queries kept at the end of the prefill.
  var observationWindow: Int { get }
  /// A one-line description for reports.
  var summary: String { get }
  /// The tensors of layer `index` (0-based among this workload's layers).
  func layer(_ index: Int) throws -> LayerTrace
  /// A separate sample of the same heads for HeteroCache's calibration, or nil when the
  /// workload can only be profiled on itself.
  func calibrationSample() throws -> (any AttentionWorkload)?
}
