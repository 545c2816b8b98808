import HeteroKVConfig
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

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

/// Seconds since `start`.
func seconds(since start: ContinuousClock.Instant) -> Double {
  (ContinuousClock.now - start).inSeconds
}

/// One KV head of one layer, as the worker holds it.
struct HeadState: Sendable {
  var role: HeadRole = .volatile
  /// Tokens a compressed head keeps, or the most a full head's step may keep.
  var cap = 0
  /// Key codes with exact sinks and window: every head during prefill, full heads after.
  var index: ApproximateKeyIndex?
  /// Prefill keys waiting for the index: its codebook is trained on the first
  /// `WorkerOptions.codebookTrainingKeys` keys, or on the whole prefill at the first attend
  /// when it is shorter, not on whichever chunk happened to come first.
  var untrainedKeys: HalfMatrix?
  /// The resident cache of a compressed head (after prefill).
  var cache: CompressedHeadCache?
  /// A pivot's drift watch.
  var monitor: PivotDriftMonitor?
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
      + tailKeys.byteCount + tailValues.byteCount
  }

  /// Whether the head goes through the HCAttention path (scores from codes, context from the
  /// memory tier).
  var isFull: Bool { cache == nil }
}

/// A head's key index moved out of the session while the cores code keys into it, so the
/// append happens in place (one owner) and in parallel across heads.
final class IndexBox: @unchecked Sendable {
  var index: ApproximateKeyIndex?
  var untrained: HalfMatrix?
  /// False for a compressed head, which has no index to append to.
  let full: Bool

  init(_ head: HeadState) {
    index = head.index
    untrained = head.untrainedKeys
    full = head.cache == nil
  }

  /// Appends `keys`: coded when the index exists; else held until `trainingKeys` keys (or
  /// `now`), then the codebook is trained on all held keys and they are coded.
  func append(_ keys: HalfMatrix, options: WorkerOptions, layer: Int, kvHead: Int, now: Bool)
    throws
  {
    if var index {
      try index.append(keys)
      self.index = index
      return
    }
    var held = untrained ?? HalfMatrix(cols: keys.cols)
    try held.append(contentsOf: keys)
    guard now || held.rows >= options.codebookTrainingKeys else {
      untrained = held
      return
    }
    try trainIndex(held, options: options, layer: layer, kvHead: kvHead)
  }

  /// Trains the index on the held keys (if any) and codes them.
  func trainHeld(options: WorkerOptions, layer: Int, kvHead: Int) throws {
    guard index == nil, let held = untrained else { return }
    try trainIndex(held, options: options, layer: layer, kvHead: kvHead)
  }

  private func trainIndex(_ keys: HalfMatrix, options: WorkerOptions, layer: Int, kvHead: Int)
    throws
  {
    var index = ApproximateKeyIndex(
      codes: try options.keyStore(training: keys, layer: layer, kvHead: kvHead),
      sinks: options.settings.sinks, window: options.settings.window)
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
}

/// A sequence on the worker: its layers' key indices, caches and unshipped rows, its shard
/// writer, placement and budgets. An actor, so each sequence's calls run one at a time while
/// different sequences proceed side by side; a FIFO gate keeps calls in arrival order across
/// the suspensions of network work.
actor SequenceSession {
  let ref: SequenceRef
  let options: WorkerOptions
  let control: any ClusterControl
  let backend: any AttentionBackend
  let tier: MemoryTierClient
  let writer: ShardWriter
  let placement: SequencePlacement
  /// Profiles from an offline calibration, when the engine gave them.
  let calibrated: [HeadProfile]?
  let metrics: WorkerMetrics
  private var layers: [LayerState]
  /// Worker-resident bytes per layer as last reported to the metrics.
  private var layerResident: [Int]
  private(set) var prefillTokens = 0
  private var budgets: SequenceBudgets?
  private var decodeSteps = 0
  private var bytesMoved = 0
  private var decodeBytesMoved = 0
  /// Bytes the writer had sent when the prefill ended.
  private var prefillBytesSent = 0
  private var released = false
  private var keptTokens = 0
  private var contextTokens = 0
  private var refreshes = 0
  private var failovers = 0
  private var refreshTasks: [Task<Void, Never>] = []
  private var busy = false
  private var gate: [CheckedContinuation<Void, Never>] = []
  /// Set when a failure left the sequence's state inconsistent; every later call throws it.
  private var poisoned: WorkerError?

  var geometry: ModelGeometry { options.geometry }
  var sealed: Bool { budgets != nil }

  init(
    ref: SequenceRef, options: WorkerOptions, control: any ClusterControl,
    backend: any AttentionBackend, tier: MemoryTierClient, placement: SequencePlacement,
    calibrated: [HeadProfile]? = nil, metrics: WorkerMetrics
  ) {
    self.ref = ref
    self.metrics = metrics
    self.calibrated = calibrated
    self.options = options
    self.control = control
    self.backend = backend
    self.tier = tier
    self.placement = placement
    self.writer = ShardWriter(
      ref: ref, tier: tier, placement: placement.rendezvous, chunkTokens: options.chunkTokens,
      limitBytes: options.shipQueueBytes, metrics: metrics)
    let g = options.geometry
    layers = (0..<g.layers).map { _ in
      LayerState(heads: (0..<g.kvHeads).map { _ in HeadState(headDim: g.headDim) })
    }
    layerResident = Array(repeating: 0, count: g.layers)
  }

  /// Reports the change of `layer`'s worker-resident bytes to the metrics.
  private func noteResident(layer: Int) {
    guard !released else { return }
    let now = layers[layer].heads.reduce(0) { $0 + $1.residentBytes }
    if now != layerResident[layer] {
      metrics.adjust(resident: now - layerResident[layer])
      layerResident[layer] = now
    }
  }

  private func enter() async {
    if busy {
      await withCheckedContinuation { gate.append($0) }
    } else {
      busy = true
    }
  }

  private func checkUsable() throws(WorkerError) {
    if let poisoned { throw poisoned }
  }

  private func leave() {
    if gate.isEmpty { busy = false } else { gate.removeFirst().resume() }
  }

  // MARK: Append

  /// Appends `tokens` rows of K/V `[tokens][kvHeads][d]` to `layer`.
  func append(
    layer: Int, tokens: Int, keys: [Float16], values: [Float16], observation: [Float]?
  ) async throws(WorkerError) -> Int {
    await enter()
    defer { leave() }
    try checkUsable()
    let g = geometry
    try checkLayer(layer)
    let width = g.kvHeads * g.headDim
    guard tokens > 0, keys.count == tokens * width, values.count == tokens * width else {
      throw WorkerError(
        .invalidArgument,
        "sequence \(ref) layer \(layer): \(tokens) tokens need \(tokens * width) key and value "
          + "elements ([tokens][\(g.kvHeads)][\(g.headDim)]), got \(keys.count) and \(values.count)"
      )
    }
    if let bad = keys.firstIndex(where: { !$0.isFinite })
      ?? values.firstIndex(where: { !$0.isFinite })
    {
      throw WorkerError(
        .invalidArgument, "sequence \(ref) layer \(layer): non-finite K/V at element \(bad)")
    }
    if let observation {
      guard !sealed else {
        throw WorkerError(
          .failedPrecondition, "sequence \(ref): observation queries belong to the prefill")
      }
      let row = g.queryHeads * g.headDim
      guard !observation.isEmpty, observation.count % row == 0,
        observation.allSatisfy(\.isFinite)
      else {
        throw WorkerError(
          .invalidArgument,
          "sequence \(ref) layer \(layer): observation queries must be finite rows of "
            + "[\(g.queryHeads)][\(g.headDim)], got \(observation.count) values")
      }
    }
    let start = layers[layer].tokens
    guard start + tokens <= Int(UInt32.max) else {
      throw WorkerError(.resourceExhausted, "sequence \(ref) layer \(layer) passes 2^32 tokens")
    }
    var batches: [ShipBatch] = []
    // What can fail (shapes, codebook training) happens before anything changes; a failure
    // after that leaves the sequence refusing every call rather than answering from a
    // half-appended layer.
    let perHead: [(HalfMatrix, HalfMatrix)]
    do {
      perHead = try (0..<g.kvHeads).map { h in
        try Self.headRows(keys: keys, values: values, tokens: tokens, head: h, geometry: g)
      }
    } catch {
      throw WorkerError(.invalidArgument, "sequence \(ref) layer \(layer): \(error)")
    }
    // Key indices are coded on all cores, each moved into a box so the append is in place.
    let boxes = layers[layer].heads.map(IndexBox.init)
    for h in 0..<g.kvHeads where layers[layer].heads[h].cache == nil {
      layers[layer].heads[h].index = nil
      layers[layer].heads[h].untrainedKeys = nil
    }
    let options = self.options
    let sealed = self.sealed
    do {
      _ = try parallelMap(g.kvHeads) { h in
        guard boxes[h].full else { return }
        try boxes[h].append(perHead[h].0, options: options, layer: layer, kvHead: h, now: sealed)
      }
    } catch {
      poisoned = WorkerError(
        .internal,
        "sequence \(ref) layer \(layer): coding keys failed, the sequence is unusable: \(error)")
      throw poisoned!
    }
    for h in 0..<g.kvHeads {
      var head = layers[layer].heads[h]
      layers[layer].heads[h] = HeadState(headDim: g.headDim)
      defer { layers[layer].heads[h] = head }
      let (k, v) = perHead[h]
      if var cache = head.cache {
        head.cache = nil
        do {
          for r in 0..<tokens {
            try cache.append(key: k.row(r), value: v.row(r), position: start + r)
          }
        } catch {
          poisoned = WorkerError(.internal, "sequence \(ref) layer \(layer) head \(h): \(error)")
        }
        head.cache = cache
      } else {
        head.index = boxes[h].index
        head.untrainedKeys = boxes[h].untrained
      }
      do {
        try head.tailKeys.append(contentsOf: k)
        try head.tailValues.append(contentsOf: v)
      } catch {
        poisoned = WorkerError(.internal, "sequence \(ref) layer \(layer) head \(h): \(error)")
      }
      let pending = start + tokens - head.enqueued
      if !sealed || pending >= options.decodeShipRows {
        batches.append(shipBatch(&head, layer: layer, kvHead: h, through: start + tokens))
      }
    }
    if let poisoned { throw poisoned }
    layers[layer].tokens = start + tokens
    if let observation {
      layers[layer].observation = observation
      layers[layer].observationRows = observation.count / (g.queryHeads * g.headDim)
      layers[layer].observationEnd = start + tokens
    }
    for batch in batches { await writer.enqueue(batch) }
    for h in 0..<g.kvHeads {
      let ack = await writer.acknowledgedTokens(HeadKey(layer: layer, kvHead: h))
      layers[layer].heads[h].trimTail(acknowledged: ack)
    }
    noteResident(layer: layer)
    return layers[layer].tokens
  }

  /// The next batch of a head's tail for the writer, through token `end`.
  private func shipBatch(_ head: inout HeadState, layer: Int, kvHead: Int, through end: Int)
    -> ShipBatch
  {
    let rows = Array((head.enqueued - head.tailStart)..<(end - head.tailStart))
    let batch = ShipBatch(
      head: HeadKey(layer: layer, kvHead: kvHead), start: head.enqueued,
      values: head.tailValues.gather(rows),
      keys: options.shipsKeys ? head.tailKeys.gather(rows) : nil)
    head.enqueued = end
    return batch
  }

  static func headRows(
    keys: [Float16], values: [Float16], tokens: Int, head: Int, geometry g: ModelGeometry
  ) throws -> (HalfMatrix, HalfMatrix) {
    let d = g.headDim
    var k = [Float16](repeating: 0, count: tokens * d)
    var v = [Float16](repeating: 0, count: tokens * d)
    for t in 0..<tokens {
      let from = (t * g.kvHeads + head) * d
      for i in 0..<d {
        k[t * d + i] = keys[from + i]
        v[t * d + i] = values[from + i]
      }
    }
    return (try HalfMatrix(halves: k, cols: d), try HalfMatrix(halves: v, cols: d))
  }

  private func checkLayer(_ layer: Int) throws(WorkerError) {
    guard (0..<geometry.layers).contains(layer) else {
      throw WorkerError(
        .invalidArgument, "layer \(layer) is outside 0..<\(geometry.layers) of \(geometry.name)")
    }
  }

  // MARK: Attend

  /// Attention of `queries` `[queryHeads][d]` over everything `layer` holds.
  func attend(layer: Int, queries: [Float], withSelection: Bool) async throws(WorkerError)
    -> AttendResult
  {
    await enter()
    defer { leave() }
    try checkUsable()
    let g = geometry
    try checkLayer(layer)
    guard queries.count == g.queryHeads * g.headDim, queries.allSatisfy(\.isFinite) else {
      throw WorkerError(
        .invalidArgument,
        "sequence \(ref) layer \(layer): queries must be \(g.queryHeads)x\(g.headDim) finite "
          + "values, got \(queries.count)")
    }
    if !sealed { try await seal() }
    applyRefreshes(layer: layer)
    let group = g.groupSize
    let d = g.headDim
    let scale = FullAttention.scale(headDim: d)
    let tau = Float(options.settings.tau)
    let state = layers[layer]
    let computations: [HeadComputation] = state.heads.enumerated().map { h, head in
      let q = Array(queries[(h * group * d)..<((h + 1) * group * d)])
      if let cache = head.cache { return .attend(cache: cache, queries: q) }
      let cap =
        options.policy == .hcattention && options.settings.capSelection && head.cap > 0
        ? head.cap : nil
      return .select(index: head.index!, queries: q, tau: tau, cap: cap)
    }
    var timings = StepTimings()
    var mark = ContinuousClock.now
    let results: [HeadComputationResult]
    do {
      results = try backend.run(computations, groupSize: group, scale: scale)
      timings.compute = seconds(since: mark)
      mark = .now
    } catch {
      throw WorkerError(.internal, "sequence \(ref) layer \(layer): \(error)")
    }
    var outputs = [Float](repeating: 0, count: queries.count)
    var selections: [[Int32]] = []
    var moved = 0
    var kept = 0
    var workerRead = 0
    // Remote work of every full head, fanned out together.
    var plans: [(head: Int, requests: [RemoteRequest], local: AttentionPartial)] = []
    for (h, result) in results.enumerated() {
      let q = Array(queries[(h * group * d)..<((h + 1) * group * d)])
      switch result {
      case .attended(let partial):
        outputs.replaceSubrange(h * group * d..<(h + 1) * group * d, with: partial.outputs)
        let cache = state.heads[h].cache!
        kept += cache.positions.count * group
        workerRead += cache.residentBytes
        if withSelection {
          let positions = cache.positions.map(Int32.init)
          selections += Array(repeating: positions, count: group)
        }
      case .selected(let scores, let chosen):
        let key = HeadKey(layer: layer, kvHead: h)
        if let failure = await writer.failure(key) { throw failure }
        let ack = await writer.acknowledgedTokens(key)
        layers[layer].heads[h].trimTail(acknowledged: ack)
        let plan = try await plan(
          layer: layer, kvHead: h, selections: chosen, queries: q, acknowledged: ack)
        plans.append((h, plan.requests, plan.local))
        kept += chosen.reduce(0) { $0 + $1.indices.count }
        workerRead += state.heads[h].index?.residentBytes ?? 0
        if withSelection { selections += chosen.map(\.indices) }
        watchDrift(layer: layer, kvHead: h, scores: scores)
      }
    }
    timings.plan = seconds(since: mark)
    mark = .now
    let answers = try await fanOut(plans.flatMap(\.requests))
    timings.fanOut = seconds(since: mark)
    mark = .now
    var cursor = 0
    for plan in plans {
      let parts = Array(answers[cursor..<(cursor + plan.requests.count)]) + [plan.local]
      cursor += plan.requests.count
      moved += plan.requests.reduce(0) { $0 + $1.bytes }
      do {
        let merged = try AttentionPartial.merge(parts)
        outputs.replaceSubrange(
          plan.head * group * d..<(plan.head + 1) * group * d, with: merged.outputs)
      } catch {
        throw WorkerError(.internal, "sequence \(ref) layer \(layer): merge failed: \(error)")
      }
    }
    timings.merge = seconds(since: mark)
    layers[layer].decodeStep += 1
    if layer == 0 { decodeSteps += 1 }
    bytesMoved += moved
    decodeBytesMoved += moved
    let context = state.tokens * g.queryHeads
    keptTokens += kept
    contextTokens += context
    noteResident(layer: layer)
    return AttendResult(
      output: outputs, selections: withSelection ? selections : nil, bytesMoved: moved,
      keptTokens: kept, contextTokens: context, workerBytesRead: workerRead, timings: timings)
  }

  /// One near-data attention request with the nodes that can answer it, primary first.
  struct RemoteRequest: Sendable {
    var request: PartialAttentionRequest
    var holders: [String]
    var bytes: Int
  }

  /// Splits a head's kept tokens into requests per shard chunk (tokens the memory tier
  /// holds) and a partial over the rows still on the worker.
  private func plan(
    layer: Int, kvHead: Int, selections: [TauMassSelection], queries: [Float], acknowledged: Int
  ) async throws(WorkerError) -> (requests: [RemoteRequest], local: AttentionPartial) {
    let group = selections.count
    let d = geometry.headDim
    let exact = options.outputMode == .exact
    var byChunk: [Int: [(tokens: [UInt32], weights: [Float])]] = [:]
    var localTokens = [[Int]](repeating: [], count: group)
    var localWeights = [[Float]](repeating: [], count: group)
    let head = layers[layer].heads[kvHead]
    for (q, sel) in selections.enumerated() {
      // Indices ascend, so each chunk's tokens are one run: one dictionary visit per run.
      let indices = sel.indices
      var k = 0
      while k < indices.count {
        let token = Int(indices[k])
        if token >= acknowledged {
          localTokens[q].append(token - head.tailStart)
          localWeights[q].append(sel.weights[k])
          k += 1
          continue
        }
        let c = writer.chunk(of: token)
        var end = k + 1
        while end < indices.count, Int(indices[end]) < acknowledged,
          writer.chunk(of: Int(indices[end])) == c
        {
          end += 1
        }
        byChunk[c, default: Array(repeating: (tokens: [], weights: []), count: group)][q].tokens
          .append(contentsOf: indices[k..<end].map { UInt32($0) })
        byChunk[c]![q].weights.append(contentsOf: sel.weights[k..<end])
        k = end
      }
    }
    var requests: [RemoteRequest] = []
    for (c, heads) in byChunk.sorted(by: { $0.key < $1.key }) {
      let shard = ref.shard(layer: layer, kvHead: kvHead, chunk: c)
      let last = Int(heads.compactMap { $0.tokens.last }.max() ?? 0)
      let holders = await writer.holders(shard, through: last)
      let request = PartialAttentionRequest(
        shard: shard, mode: exact ? .exact : .weights, headDim: d,
        scale: FullAttention.scale(headDim: d),
        heads: heads.enumerated().map { q, part in
          exact
            ? .exact(tokens: part.tokens, query: Array(queries[q * d..<(q + 1) * d]))
            : .weighted(tokens: part.tokens, weights: part.weights)
        })
      let tokens = heads.reduce(0) { $0 + $1.tokens.count }
      let up = 32 + tokens * (exact ? 4 : 8) + (exact ? group * d * 4 : 0)
      requests.append(
        RemoteRequest(request: request, holders: holders, bytes: up + 4 + group * (8 + d * 4)))
    }
    do {
      let local = try backend.localPartial(
        queries: queries, heads: group, keys: exact ? head.tailKeys : nil, values: head.tailValues,
        tokens: localTokens, weights: localWeights)
      return (requests, local)
    } catch {
      throw WorkerError(.internal, "sequence \(ref) layer \(layer): \(error)")
    }
  }

  /// Sends every request at once; each goes to its first holder and, when that node cannot
  /// answer, to the next replica. Partials come back in request order.
  private func fanOut(_ requests: [RemoteRequest]) async throws(WorkerError) -> [AttentionPartial] {
    guard !requests.isEmpty else { return [] }
    let tier = self.tier
    let timeout = options.requestTimeout
    let ref = self.ref
    let outcome: Result<[(AttentionPartial, Int)], WorkerError> = await withTaskGroup(
      of: (Int, Result<(AttentionPartial, Int), WorkerError>).self
    ) { group in
      for (i, remote) in requests.enumerated() {
        group.addTask {
          var tried: [String] = []
          for (attempt, node) in remote.holders.enumerated() {
            do {
              let partial = try await tier.node(node).partialAttention(
                remote.request, timeout: timeout)
              return (i, .success((partial, attempt)))
            } catch {
              let error = error as? DataPlaneError ?? DataPlaneError(.internalError, "\(error)")
              tried.append("\(node) (\(error.code))")
              let failover: Set<DataPlaneError.Code> = [
                .nodeUnreachable, .connectionClosed, .deadlineExceeded, .unknownShard,
                .unknownSequence, .indexOutOfRange,
              ]
              if !failover.contains(error.code) {
                return (i, .failure(WorkerError(.internal, "sequence \(ref): \(error)")))
              }
            }
          }
          return (
            i,
            .failure(
              WorkerError(
                .dataUnavailable,
                "sequence \(ref): shard \(remote.request.shard) is on no reachable memory node"
                  + (tried.isEmpty
                    ? " (no node holds it)" : "; tried \(tried.joined(separator: ", "))")
              ))
          )
        }
      }
      var slots = [(AttentionPartial, Int)?](repeating: nil, count: requests.count)
      for await (i, result) in group {
        switch result {
        case .success(let value): slots[i] = value
        case .failure(let error):
          group.cancelAll()
          return .failure(error)
        }
      }
      return .success(slots.map { $0! })
    }
    switch outcome {
    case .success(let answers):
      let failed = answers.filter { $0.1 > 0 }.count
      failovers += failed
      metrics.failedOver(failed)
      return answers.map(\.0)
    case .failure(let error):
      throw error
    }
  }

  // MARK: Prefill end: profiles, budgets, caches

  /// Ends the prefill, whose length is the shortest layer's (an engine appends a layer's
  /// first decode token just before attending it, so earlier layers may be a token ahead).
  /// Waits for the rows to reach the memory tier, profiles the heads, reports to the
  /// coordinator, and builds each head's decode state from its budget.
  private func seal() async throws(WorkerError) {
    let g = geometry
    let n = layers.map(\.tokens).min() ?? 0
    if let l = layers.firstIndex(where: { $0.tokens == 0 }) {
      throw WorkerError(
        .failedPrecondition,
        "sequence \(ref): layer \(l) has no prefill; append every layer before attention")
    }
    await writer.flush()
    prefillBytesSent = await writer.bytesSent
    for l in 0..<g.layers {
      for h in 0..<g.kvHeads {
        let key = HeadKey(layer: l, kvHead: h)
        if let failure = await writer.failure(key) { throw failure }
        layers[l].heads[h].trimTail(acknowledged: await writer.acknowledgedTokens(key))
      }
      noteResident(layer: l)
    }
    try trainHeldKeys()
    let (profiles, lastQuery) = try profileHeads(prefillTokens: n)
    let budgets = try await control.reportProfiles(ref, prefillTokens: n, profiles: profiles)
    guard budgets.policy == options.policy else {
      throw WorkerError(
        .failedPrecondition,
        "the coordinator budgets with policy \(budgets.policy.rawValue), this worker runs "
          + "\(options.policy.rawValue): give both the same cluster file")
    }
    var caps: [HeadKey: HeadBudget] = [:]
    for b in budgets.heads { caps[HeadKey(layer: b.layer, kvHead: b.kvHead)] = b }
    let compressedCaps = budgets.heads.filter { !$0.role.keepsFullContext }.map(\.cap)
    let meanCap =
      compressedCaps.isEmpty ? max(1, n / 8) : compressedCaps.reduce(0, +) / compressedCaps.count
    for l in 0..<g.layers {
      for h in 0..<g.kvHeads {
        guard let budget = caps[HeadKey(layer: l, kvHead: h)] else {
          throw WorkerError(.coordinator, "the coordinator sent no budget for layer \(l) head \(h)")
        }
        var head = layers[l].heads[h]
        head.role = budget.role
        head.cap = min(max(1, budget.cap), n)
        let compressed =
          switch options.policy {
          case .hcattention: false
          case .uniform: true
          case .heterocache: !budget.role.keepsFullContext
          }
        let probabilities = lastQuery[l][h]
        let length = layers[l].tokens
        if compressed {
          var positions: [Int]
          if let p = probabilities {
            let smoothed = (0..<g.groupSize).flatMap {
              AttentionPattern.smooth(
                p[$0 * length..<($0 + 1) * length], width: options.heteroCache.poolWidth)
            }
            let ranking = AttentionPattern.maxOfRows(smoothed, rows: g.groupSize)
            positions = AttentionPattern.top(Array(ranking[0..<n]), k: head.cap).sorted()
          } else {
            // No queries to rank by: the sinks and the most recent tokens.
            let sinks = min(options.settings.sinks, head.cap)
            positions = Array(0..<sinks) + Array(max(sinks, n - (head.cap - sinks))..<n)
          }
          // Tokens appended after the prefill (a decode token ahead of the first attend).
          positions += Array(n..<length)
          let (keys, values) = try await gatherRows(layer: l, kvHead: h, positions: positions)
          do {
            head.cache = try CompressedHeadCache(positions: positions, rows: keys, values: values)
          } catch {
            throw WorkerError(.internal, "sequence \(ref) layer \(l) head \(h): \(error)")
          }
          head.index = nil
        } else if budget.role == .pivot, options.policy == .heterocache, let p = probabilities {
          head.monitor = PivotDriftMonitor(
            prefillProbabilities: p, heads: g.groupSize, budget: meanCap,
            configuration: options.heteroCache)
        }
        layers[l].heads[h] = head
      }
    }
    prefillTokens = n
    self.budgets = budgets
  }

  /// Trains the codebooks of heads whose prefill was shorter than
  /// `WorkerOptions.codebookTrainingKeys`, on all of it, every head on its own core.
  private func trainHeldKeys() throws(WorkerError) {
    let g = geometry
    let boxes = layers.flatMap { $0.heads.map(IndexBox.init) }
    let options = self.options
    do {
      _ = try parallelMap(boxes.count) { i in
        try boxes[i].trainHeld(options: options, layer: i / g.kvHeads, kvHead: i % g.kvHeads)
      }
    } catch {
      poisoned = WorkerError(
        .internal, "sequence \(ref): coding keys failed, the sequence is unusable: \(error)")
      throw poisoned!
    }
    for (i, box) in boxes.enumerated() {
      layers[i / g.kvHeads].heads[i % g.kvHeads].index = box.index
      layers[i / g.kvHeads].heads[i % g.kvHeads].untrainedKeys = box.untrained
    }
  }

  /// Profiles of every head from each layer's observation queries (HeteroCache; the first
  /// row stands for the prefill, the later rows for decode steps), and the last row's
  /// approximate probabilities per head `[groupSize][n]` where queries were given. Without
  /// queries (other policies) every head reports as the policy treats it.
  private func profileHeads(prefillTokens n: Int) throws(WorkerError)
    -> ([HeadProfile], [[[Float]?]])
  {
    let g = geometry
    let group = g.groupSize
    let d = g.headDim
    var profiles: [HeadProfile] = []
    var last: [[[Float]?]] = []
    for (l, layer) in layers.enumerated() {
      let rows = layer.observationRows
      if options.policy == .heterocache && rows < 2 && calibrated == nil {
        throw WorkerError(
          .failedPrecondition,
          "sequence \(ref) layer \(l): HeteroCache profiles heads from the prefill's last "
            + "queries; append at least 2 observation rows with the prefill (got \(rows))")
      }
      guard rows > 0 else {
        let role: HeadRole = options.policy == .uniform ? .anchor : .volatile
        profiles += (0..<g.kvHeads).map { h in
          var p =
            calibrated?.first { $0.layer == l && $0.kvHead == h }
            ?? HeadProfile(
              layer: l, kvHead: h, stability: 1,
              similarity: (0..<g.kvHeads).map { $0 == h ? 1 : 0 }, role: role)
          if options.policy != .heterocache { p.role = role }
          return p
        }
        last.append(Array(repeating: nil, count: g.kvHeads))
        continue
      }
      let length = layer.tokens
      let end = layer.observationEnd
      let w = min(rows, end)
      let observation = layer.observation
      let heads = layer.heads
      let scale = FullAttention.scale(headDim: d)
      // Per head and row: causal probabilities of the row's query group.
      let perHead: [[[Float]]]
      do {
        perHead = try parallelMap(g.kvHeads) { h in
          try (0..<w).map { r in
            let row = rows - w + r
            let position = end - w + r
            var q = [Float]()
            q.reserveCapacity(group * d)
            let base = row * g.queryHeads * d + h * group * d
            q += observation[base..<(base + group * d)]
            var s = try heads[h].index!.scores(queries: q, heads: group, scale: scale)
            for a in 0..<group {
              for j in (position + 1)..<max(position + 1, length) { s[a * length + j] = -.infinity }
            }
            _ = Softmax.normalizeRows(&s, heads: group, n: length)
            return s
          }
        }
        var profiler = HeadProfiler(
          layer: l, kvHeads: g.kvHeads, groupSize: group, configuration: options.heteroCache)
        try profiler.recordPrefill(perHead.map { $0[0] })
        for r in 1..<max(2, w) where r < w { try profiler.recordDecode(perHead.map { $0[r] }) }
        if w < 2 { try profiler.recordDecode(perHead.map { $0[0] }) }
        var layerProfiles =
          try calibrated.map { all in
            all.filter { $0.layer == l }.sorted { $0.kvHead < $1.kvHead }
          } ?? profiler.profiles()
        switch options.policy {
        case .heterocache: break
        case .hcattention: for i in layerProfiles.indices { layerProfiles[i].role = .volatile }
        case .uniform: for i in layerProfiles.indices { layerProfiles[i].role = .anchor }
        }
        profiles += layerProfiles
        last.append(perHead.map { $0[w - 1] })
      } catch {
        throw WorkerError(
          .invalidArgument, "sequence \(ref) layer \(l): profiling failed: \(error)")
      }
    }
    return (profiles, last)
  }

  /// K/V rows of `positions` (ascending, all stored on the memory tier) of one head.
  private func gatherRows(layer: Int, kvHead: Int, positions: [Int]) async throws(WorkerError)
    -> (HalfMatrix, HalfMatrix)
  {
    let d = geometry.headDim
    var keys = HalfMatrix(cols: d)
    var values = HalfMatrix(cols: d)
    var byChunk: [Int: [UInt32]] = [:]
    for p in positions { byChunk[writer.chunk(of: p), default: []].append(UInt32(p)) }
    for (c, tokens) in byChunk.sorted(by: { $0.key < $1.key }) {
      let shard = ref.shard(layer: layer, kvHead: kvHead, chunk: c)
      let holders = await writer.holders(shard, through: Int(tokens.last!))
      var answer: GatherResponse?
      var tried: [String] = []
      for node in holders {
        do {
          answer = try await tier.node(node).gather(
            GatherRequest(shard: shard, tokens: tokens, includeKeys: true),
            timeout: options.requestTimeout)
          break
        } catch {
          tried.append("\(node) (\(error.code))")
        }
      }
      guard let answer, let k = answer.keyArray else {
        throw WorkerError(
          .dataUnavailable,
          "sequence \(ref): rows of shard \(shard) are on no reachable memory node"
            + (tried.isEmpty ? "" : "; tried \(tried.joined(separator: ", "))"))
      }
      do {
        try keys.append(contentsOf: HalfMatrix(halves: k, cols: d))
        try values.append(contentsOf: HalfMatrix(halves: answer.valueArray, cols: d))
      } catch {
        throw WorkerError(.internal, "sequence \(ref): gathered rows do not fit: \(error)")
      }
    }
    return (keys, values)
  }

  // MARK: Drift and refresh

  /// On a pivot's check step, compares its attention with its reference; on drift, starts
  /// refreshing its satellites' caches from the memory tier in the background.
  private func watchDrift(layer: Int, kvHead: Int, scores: [Float]) {
    guard var monitor = layers[layer].heads[kvHead].monitor else { return }
    let step = layers[layer].decodeStep
    guard monitor.checks(step: step) else { return }
    let group = geometry.groupSize
    var p = scores
    let n = p.count / group
    _ = Softmax.normalizeRows(&p, heads: group, n: n)
    let drift = monitor.observe(step: step, probabilities: p, heads: group)
    layers[layer].heads[kvHead].monitor = monitor
    guard let drift else { return }
    let prefill = prefillTokens
    for (s, head) in layers[layer].heads.enumerated() {
      guard case .satellite(let pivot) = head.role, pivot == kvHead, head.cache != nil else {
        continue
      }
      let positions = AttentionPattern.top(Array(drift.ranking[0..<prefill]), k: head.cap).sorted()
      refreshes += 1
      metrics.refreshed()
      refreshTasks.append(
        Task {
          guard
            let (keys, values) = try? await self.gatherRows(
              layer: layer, kvHead: s, positions: positions),
            let cache = try? CompressedHeadCache(positions: positions, rows: keys, values: values)
          else { return }
          self.refreshed(layer: layer, kvHead: s, prefix: cache)
        })
    }
  }

  private func refreshed(layer: Int, kvHead: Int, prefix: CompressedHeadCache) {
    layers[layer].readyRefresh[kvHead] = prefix
  }

  /// Applies the refreshes that finished since the layer's last step.
  private func applyRefreshes(layer: Int) {
    for (s, prefix) in layers[layer].readyRefresh {
      guard let cache = layers[layer].heads[s].cache else { continue }
      if let merged = try? cache.keepingRows(from: prefillTokens, after: prefix) {
        layers[layer].heads[s].cache = merged
      }
    }
    layers[layer].readyRefresh = [:]
  }

  // MARK: Release and stats

  /// Flushes, drops the rows from every node and closes the sequence at the coordinator.
  ///
  /// A node that cannot be reached (dead, or cut off) does not fail the release: its rows
  /// are gone with it, or will be dropped when the coordinator reclaims the sequence. Such
  /// nodes are logged by the caller (``ReleaseOutcome/unreachableNodes``) and counted in
  /// `hkv_worker_release_unreachable_nodes_total`; the coordinator's reservation is freed
  /// either way. Only a failure to close the sequence at the coordinator is an error.
  func release() async throws(WorkerError) -> ReleaseOutcome {
    await enter()
    defer { leave() }
    for task in refreshTasks { task.cancel() }
    let storedBytes = await writer.storedBytes
    let unreachable = await writer.dropAll()
    metrics.releaseMissed(nodes: unreachable.count)
    if !released {
      released = true
      metrics.adjust(resident: -layerResident.reduce(0, +))
      layerResident = layerResident.map { _ in 0 }
    }
    try await control.closeSequence(ref)
    // Calls queued behind the release find the sequence gone.
    poisoned = WorkerError(.unknownSequence, "sequence \(ref) was released")
    return ReleaseOutcome(releasedBytes: storedBytes, unreachableNodes: unreachable)
  }

  /// Where the sequence's bytes are and what its steps moved.
  func stats() async -> SequenceStats {
    let g = geometry
    let tokens = layers.map(\.tokens).max() ?? 0
    var heads: [SequenceStats.Head] = []
    var unshipped = 0
    var storedRows = 0
    for l in layers.indices {
      for h in layers[l].heads.indices {
        let ack = await writer.acknowledgedTokens(HeadKey(layer: l, kvHead: h))
        layers[l].heads[h].trimTail(acknowledged: ack)
        storedRows += ack
      }
    }
    for (l, layer) in layers.enumerated() {
      for (h, head) in layer.heads.enumerated() {
        heads.append(
          .init(
            layer: l, kvHead: h, role: head.role, cap: head.cap, residentBytes: head.residentBytes))
        unshipped += head.tailValues.rows
      }
    }
    return SequenceStats(
      ref: ref, tokens: tokens, prefillTokens: prefillTokens, policy: options.policy,
      workerBytes: heads.reduce(0) { $0 + $1.residentBytes },
      memoryTierBytes: await writer.storedBytes,
      fullKVBytes: layers.reduce(0) { $0 + $1.tokens * g.kvHeads * g.headDim * 4 },
      decodeSteps: decodeSteps, bytesMoved: bytesMoved + (await writer.bytesSent),
      refreshes: refreshes, failovers: failovers, unshippedRows: unshipped, storedRows: storedRows,
      keptTokens: keptTokens, contextTokens: contextTokens,
      decodeBytesMoved: sealed ? decodeBytesMoved + (await writer.bytesSent) - prefillBytesSent : 0,
      underReplicatedShards: await writer.underReplicatedShards, heads: heads)
  }

  /// Waits until every row is on the memory tier (for tests and benchmarks).
  func flush() async {
    await writer.flush()
    for l in layers.indices {
      for h in layers[l].heads.indices {
        let ack = await writer.acknowledgedTokens(HeadKey(layer: l, kvHead: h))
        layers[l].heads[h].trimTail(acknowledged: ack)
      }
      noteResident(layer: l)
    }
  }
}

/// A sequence's footprint and traffic.
public struct SequenceStats: Sendable, Hashable, Codable {
  /// One KV head's role, cap and worker bytes.
  public struct Head: Sendable, Hashable, Codable {
    public var layer: Int
    public var kvHead: Int
    public var role: HeadRole
    public var cap: Int
    public var residentBytes: Int
  }
  public var ref: SequenceRef
  /// Tokens of the longest layer.
  public var tokens: Int
  public var prefillTokens: Int
  public var policy: BudgetPolicyKind
  /// Bytes resident on the worker (codes, caches, unshipped rows).
  public var workerBytes: Int
  /// Bytes the memory tier holds for the sequence, all copies.
  public var memoryTierBytes: Int
  /// fp16 K+V of every token of every layer.
  public var fullKVBytes: Int
  public var decodeSteps: Int
  /// Bytes moved between worker and memory tier (puts, near-data attention, refreshes).
  public var bytesMoved: Int
  public var refreshes: Int
  /// Requests answered by a replica after the first holder failed.
  public var failovers: Int
  /// Rows (tokens x heads) not yet on the memory tier.
  public var unshippedRows: Int
  /// Rows at least one memory node holds; with `unshippedRows`, every row of every head.
  public var storedRows: Int
  /// Over every query head of every decode step: tokens attended, and tokens the context
  /// held. `keptTokens / contextTokens` is the share a step keeps (1 for full attention).
  public var keptTokens: Int
  public var contextTokens: Int
  /// Bytes moved by decode steps alone: near-data attention and decode rows shipped.
  public var decodeBytesMoved: Int
  /// Shards that fewer nodes hold in full than their placement names.
  public var underReplicatedShards: Int
  public var heads: [Head]

  /// The share of the context a query head's decode step attends, on average.
  public var keptShare: Double {
    contextTokens > 0 ? Double(keptTokens) / Double(contextTokens) : 0
  }

  /// Bytes moved per decode step, on average.
  public var decodeBytesPerStep: Double {
    decodeSteps > 0 ? Double(decodeBytesMoved) / Double(decodeSteps) : 0
  }
}

/// What releasing a sequence did.
public struct ReleaseOutcome: Sendable, Hashable {
  /// Bytes the memory tier held for the sequence, all copies.
  public var releasedBytes: Int
  /// Nodes that could not be told to drop their rows (dead or cut off).
  public var unreachableNodes: [String]
}
