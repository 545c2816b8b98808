/// What one attention call returned.
public struct AttendResult: Sendable {
  /// Outputs `[queryHeads][headDim]`.
  public var output: [Float]
  /// Per query head, the positions whose values entered its output (when asked for).
  public var selections: [[Int32]]?
  /// Bytes this step moved between the worker and the memory tier.
  public var bytesMoved: Int
  /// Tokens attended, summed over the query heads: the tau-mass set (with sinks and window)
  /// of a full head, the resident cache of a compressed head.
  public var keptTokens = 0
  /// The layer's context length times the query heads: what full attention would attend.
  public var contextTokens = 0
  /// Worker-resident bytes the step read: key codes of full heads, caches of compressed ones.
  public var workerBytesRead = 0
  /// Where the step's time went.
  public var timings = StepTimings()

  /// A result; the counts default to zero where the caller does not know them (a remote
  /// worker's step reports its output, selections and bytes).
  public init(
    output: [Float], selections: [[Int32]]?, bytesMoved: Int, keptTokens: Int = 0,
    contextTokens: Int = 0, workerBytesRead: Int = 0, timings: StepTimings = StepTimings()
  ) {
    self.output = output
    self.selections = selections
    self.bytesMoved = bytesMoved
    self.keptTokens = keptTokens
    self.contextTokens = contextTokens
    self.workerBytesRead = workerBytesRead
    self.timings = timings
  }
}

/// Where one attention step's time went on the worker, in seconds.
public struct StepTimings: Sendable, Hashable, Codable {
  /// Scoring every token from the key codes and tau selection (full heads), and exact
  /// attention over resident caches (compressed heads): the backend's work.
  public var compute = 0.0
  /// Building the near-data requests and the partial over rows still on the worker.
  public var plan = 0.0
  /// Waiting for the memory nodes: the network both ways and their partial attention.
  public var fanOut = 0.0
  /// Merging the partials.
  public var merge = 0.0

  public init() {}

  /// The sum.
  public var total: Double { compute + plan + fanOut + merge }

  /// Adds another step's timings.
  public static func += (a: inout StepTimings, b: StepTimings) {
    a.compute += b.compute
    a.plan += b.plan
    a.fanOut += b.fanOut
    a.merge += b.merge
  }
}
