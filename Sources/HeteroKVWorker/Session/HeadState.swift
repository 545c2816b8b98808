import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

/// One KV head of one layer, as the worker holds it.
struct HeadState: Sendable {
  var role: HeadRole = .volatile
  /// Tokens a compressed head keeps, or the most a full head's step may keep.
  var cap = 0
  /// Key codes with exact sinks and window: every head during prefill, full heads after, and
  /// compressed heads that recall.
  var index: ApproximateKeyIndex?
  /// Prefill keys waiting for the index: its codebook is trained on the first
  /// `WorkerOptions.codebookTrainingKeys` keys, or on the whole prefill at the first attend
  /// when it is shorter, not on whichever chunk happened to come first.
  var untrainedKeys: HalfMatrix?
  /// The resident cache of a compressed head (after prefill).
  var cache: CompressedHeadCache?
  /// A pivot's drift watch.
  var monitor: PivotDriftMonitor?
  /// The running value sum that estimates what a step leaves out (`unkept_estimate`).
  var unkept: UnkeptTokenEstimate?
  /// Rows not yet known to be on a memory node: tokens `tailStart ..< tailStart + rows`.
  var tailStart = 0
  var tailKeys: HalfMatrix
  var tailValues: HalfMatrix
  /// Tokens handed to the shard writer.
  var enqueued = 0

  init(headDim: Int) {
    tailKeys = HalfMatrix(cols: headDim)
    tailValues = HalfMatrix(cols: headDim)
  }

  /// Drops tail rows the memory tier now holds.
  mutating func trimTail(acknowledged: Int) {
    let drop = min(max(0, acknowledged - tailStart), tailValues.rows)
    guard drop > 0 else { return }
    tailKeys.removeFirst(drop)
    tailValues.removeFirst(drop)
    tailStart += drop
  }

  var residentBytes: Int {
    (index?.residentBytes ?? 0) + (untrainedKeys?.byteCount ?? 0) + (cache?.residentBytes ?? 0)
      + tailKeys.byteCount + tailValues.byteCount + (unkept?.byteCount ?? 0)
  }

  /// Whether the head goes through the HCAttention path (scores from codes, context from the
  /// memory tier).
  var isFull: Bool { cache == nil }

  /// Whether a compressed head also scores its codes and recalls what its cache lacks.
  var recalls: Bool { cache != nil && index != nil }
}

/// A head's key index moved out of the session while the cores code keys into it, so the
/// append happens in place (one owner) and in parallel across heads.
final class IndexBox: @unchecked Sendable {
  var index: ApproximateKeyIndex?
  var untrained: HalfMatrix?
  /// False for a compressed head without an index to append to (one that recalls has one).
  let full: Bool

  init(_ head: HeadState) {
    index = head.index
    untrained = head.untrainedKeys
    full = head.cache == nil || head.index != nil
  }

  /// Appends `keys`: coded when the index exists; else held until `trainingKeys` keys (or
  /// `now`), then the codebook is trained on all held keys and they are coded.
  func append(
    _ keys: HalfMatrix, options: WorkerOptions, layer: Int, kvHead: Int, now: Bool,
    queries: [Float]? = nil
  ) throws {
    // In place: a copy bound here would share the codes' storage and copy all of it.
    if index != nil {
      try index!.append(keys)
      return
    }
    var held = untrained ?? HalfMatrix(cols: keys.cols)
    try held.append(contentsOf: keys)
    guard now || held.rows >= options.codebookTrainingKeys else {
      untrained = held
      return
    }
    try trainIndex(held, options: options, layer: layer, kvHead: kvHead, queries: queries)
  }

  /// Relative squared error of the index's pq codes over a sample of `keys` (the ones coded):
  /// how badly the codes reconstruct this head's keys; 0 for other codecs.
  func reconstructionError(_ keys: HalfMatrix) -> Double {
    index.map { KeyIndexRecipe.reconstructionError(of: $0, keys: keys) } ?? 0
  }

  /// Trains the index on the held keys (if any) and codes them.
  func trainHeld(options: WorkerOptions, layer: Int, kvHead: Int, queries: [Float]?) throws {
    guard index == nil, let held = untrained else { return }
    try trainIndex(held, options: options, layer: layer, kvHead: kvHead, queries: queries)
  }

  /// Trains the index on `keys` (query-aware with the group's last prefill `queries`, when
  /// the settings ask for it and they are known) and codes them.
  func trainIndex(
    _ keys: HalfMatrix, options: WorkerOptions, layer: Int, kvHead: Int, queries: [Float]?,
    recipe: KeyIndexRecipe? = nil
  ) throws {
    var index = try options.keyIndex(
      training: keys, queries: queries, layer: layer, kvHead: kvHead, recipe: recipe)
    try index.append(keys)
    self.index = index
    untrained = nil
  }
}

/// One layer of a sequence.
struct LayerState: Sendable {
  var tokens = 0
  var heads: [HeadState]
  /// The prefill's last queries `[rows][queryHeads][d]`, for profiling.
  var observation: [Float] = []
  var observationRows = 0
  /// The layer's length when the observation queries came (the last of them sits just before).
  var observationEnd = 0
  /// Decode steps attended so far.
  var decodeStep = 0
  /// Refreshed prefill parts of satellite caches, ready to apply at the next step.
  var readyRefresh: [Int: CompressedHeadCache] = [:]
  /// Seconds of worker compute one near-data head has taken at recent steps (a running mean;
  /// nil before the first): whether the next step scores its heads a core each.
  var headWork: Double?
}
