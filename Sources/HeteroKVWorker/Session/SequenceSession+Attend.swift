import Foundation
import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

// One layer's decode step: local scoring and caches, near-data attention, the merge.
extension SequenceSession {
  // MARK: Attend

  /// Attention of `queries` `[queryHeads][d]` over everything `layer` holds.
  func attend(layer: Int, queries: [Float], withSelection: Bool) async throws(HeteroKVError)
    -> AttendResult
  {
    await enter()
    defer { leave() }
    try checkUsable()
    let g = geometry
    try checkLayer(layer)
    guard queries.count == g.queryHeads * g.headDim, queries.allSatisfy(\.isFinite) else {
      throw HeteroKVError(
        .invalidArgument,
        "sequence \(ref) layer \(layer): queries must be \(g.queryHeads)x\(g.headDim) finite "
          + "values, got \(queries.count)")
    }
    if !sealed { try await seal() }
    applyRefreshes(layer: layer)
    let group = g.groupSize
    let d = g.headDim
    let tau = Float(options.settings.tau(for: options.policy))
    let scope = options.settings.selection
    let state = layers[layer]
    let computations: [HeadComputation] = state.heads.enumerated().map { h, head in
      let q = Array(queries[(h * group * d)..<((h + 1) * group * d)])
      if let cache = head.cache {
        if let index = head.index {
          return .recall(index: index, cache: cache, queries: q, tau: tau, scope: scope)
        }
        return .attend(cache: cache, queries: q)
      }
      let cap =
        options.policy == .hcattention && options.settings.capSelection && head.cap > 0
        ? head.cap : nil
      return .select(index: head.index!, queries: q, tau: tau, cap: cap, scope: scope)
    }
    // Heads with near-data work go first, one at a time: each head's requests leave as soon as
    // its selection is made, so the memory nodes attend over them while the worker scores the
    // next head (a core each, where before the worker used both and then waited on the
    // nodes). Heads that their caches answer alone run last, together on every core, while
    // the answers are on their way.
    let remote = computations.indices.filter {
      if case .attend = computations[$0] { return false }
      return true
    }
    let cached = computations.indices.filter { !remote.contains($0) }
    // Where a head's scoring and selection outweigh the nodes' work on its kept rows and the
    // hand-offs a parallel batch costs, one head at a time leaves a core idle: there the heads
    // go a batch of one per core, each batch's requests leaving together.
    let batch = Self.headBatch(tokens: state.tokens, queryHeads: group, measured: state.headWork)
    // The step's account lives in the group's body and comes back with the answers. (Child
    // tasks return through `ask`: one returning from a typed-throws `do` block handed back a
    // wrong index in release builds.)
    let outcome = await withTaskGroup(of: (Int, Result<FanOutAnswer, HeteroKVError>).self) {
      group -> Result<(StepAccount, [FanOutAnswer]), HeteroKVError> in
      var step = StepAccount(heads: g.kvHeads, outputs: queries.count)
      do throws(HeteroKVError) {
        for first in stride(from: 0, to: remote.count, by: batch) {
          let heads = Array(remote[first..<min(first + batch, remote.count)])
          let before = step.timings.compute
          let results = try compute(heads.map { computations[$0] }, layer: layer, step: &step)
          step.headWork += step.timings.compute - before
          step.headRounds += (heads.count + Self.cores - 1) / Self.cores
          for (h, result) in zip(heads, results) {
            let mark = ContinuousClock.now
            let plan = try await absorb(
              result, layer: layer, head: h, queries: queries, withSelection: withSelection,
              step: &step)
            if let plan {
              let requests = plan.requests.map {
                ReplicatedRequest($0.request, holders: $0.holders)
              }
              let index = step.plans.count
              step.plans.append(plan)
              let tier = tier
              let timeout = options.requestTimeout
              group.addTask { [index] in
                (index, await Self.ask(tier, requests, timeout: timeout))
              }
            }
            step.timings.plan += seconds(since: mark)
          }
        }
        if !cached.isEmpty {
          let results = try compute(cached.map { computations[$0] }, layer: layer, step: &step)
          for (h, result) in zip(cached, results) {
            _ = try await absorb(
              result, layer: layer, head: h, queries: queries, withSelection: withSelection,
              step: &step)
          }
        }
        // The heads' local work that only the merge needs (the unkept tokens' estimate) and
        // the pivots' drift checks run now, while the nodes answer, not before each send.
        let deferred = ContinuousClock.now
        for i in step.plans.indices {
          guard let finish = step.plans[i].deferredLocal else { continue }
          step.plans[i].local.append(finish())
          step.plans[i].deferredLocal = nil
        }
        for (h, scores) in step.driftChecks {
          watchDrift(layer: layer, kvHead: h, scores: scores)
        }
        step.timings.plan += seconds(since: deferred)
        let mark = ContinuousClock.now
        var answers: [Int: FanOutAnswer] = [:]
        for await (i, result) in group {
          answers[i] = try fanOutAnswer(result)
        }
        step.timings.fanOut = seconds(since: mark)
        let ordered = step.plans.indices.compactMap { answers[$0] }
        guard ordered.count == step.plans.count, answers.count == step.plans.count else {
          throw HeteroKVError(
            .internalError,
            "sequence \(ref) layer \(layer): \(answers.count) answers to \(step.plans.count) plans")
        }
        return .success((step, ordered))
      } catch {
        group.cancelAll()
        return .failure(error)
      }
    }
    let (step, answers) = try outcome.get()
    let mark = ContinuousClock.now
    var outputs = step.outputs
    var moved = 0
    for (plan, answer) in zip(step.plans, answers) {
      moved += plan.requests.reduce(0) { $0 + $1.bytes }
      do {
        let merged = try AttentionPartial.merge(answer.partials + plan.local)
        outputs.replaceSubrange(
          plan.head * group * d..<(plan.head + 1) * group * d, with: merged.outputs)
      } catch {
        throw HeteroKVError(
          .internalError, "sequence \(ref) layer \(layer): merge failed: \(error)", cause: error)
      }
    }
    var timings = step.timings
    timings.merge = seconds(since: mark)
    if step.headRounds > 0 {
      let work = step.headWork / Double(step.headRounds)
      layers[layer].headWork = layers[layer].headWork.map { 0.75 * $0 + 0.25 * work } ?? work
    }
    layers[layer].decodeStep += 1
    if layer == 0 { decodeSteps += 1 }
    bytesMoved += moved
    let context = state.tokens * g.queryHeads
    keptTokens += step.kept
    contextTokens += context
    noteResident(layer: layer)
    return AttendResult(
      output: outputs, selections: withSelection ? step.selections.flatMap { $0 } : nil,
      bytesMoved: moved, keptTokens: step.kept, contextTokens: context,
      workerBytesRead: step.workerRead, timings: timings)
  }

  /// What a layer's step has gathered so far, head by head.
  struct StepAccount {
    /// The outputs `[queryHeads][d]` of the heads answered so far.
    var outputs: [Float]
    /// Per KV head, the kept tokens of each of its query heads (when asked for).
    var selections: [[[Int32]]]
    /// Near-data work in the order it was sent.
    var plans: [HeadPlan] = []
    var kept = 0
    var workerRead = 0
    var timings = StepTimings()
    /// Seconds the near-data heads' compute took, and the rounds of one head per core it ran in.
    var headWork = 0.0
    var headRounds = 0
    /// What the tier holds of the layer, asked once and only when a head needs it.
    var shipping: LayerShipping?
    /// Heads whose pivot drift is checked once the layer's requests are sent, with their
    /// approximate scores.
    var driftChecks: [(head: Int, scores: [Float])] = []

    init(heads: Int, outputs: Int) {
      self.outputs = [Float](repeating: 0, count: outputs)
      selections = Array(repeating: [], count: heads)
    }
  }

  /// One head's near-data requests and the partials on the worker they merge with.
  struct HeadPlan {
    var head: Int
    var requests: [RemoteRequest]
    var local: [AttentionPartial]
    /// A partial the merge also needs, computed once every request of the layer is sent
    /// (the unkept tokens' estimate): off the path from one head's selection to its send.
    var deferredLocal: (@Sendable () -> AttentionPartial)? = nil
  }

  /// Scores a head's worker work as long, before any step has measured it, when it is at least
  /// this many (token, query head) pairs: 128K tokens x 4 query heads take about 1 ms to score
  /// and select from 4-bit codes, and the nodes' answer for its kept rows less.
  static let longHeadWork = 1 << 18

  /// A head's worker compute worth a core of its own once measured: a parallel batch costs a
  /// thread's wake-up and join (30-60 µs each way on a VM whose idle vCPU halts) and takes the
  /// core the nodes' work on the previous head would use, so shorter heads go one at a time.
  static let headWorthACore = 0.000_15

  /// How many heads a step computes at once: one (each head's requests leave while the next is
  /// scored), or one per core where a head's compute at recent steps (`measured`, seconds) is
  /// at least `headWorthACore`, or before any measurement its work is at least `longHeadWork`.
  static func headBatch(tokens: Int, queryHeads: Int, measured: Double?) -> Int {
    let long = measured.map { $0 >= headWorthACore } ?? (tokens * queryHeads >= longHeadWork)
    return long ? cores : 1
  }

  /// The cores the backend spreads a batch of heads over (read once: the count reads cgroup
  /// files).
  static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

  /// Runs `computations` on the backend, timed into the step.
  private func compute(_ computations: [HeadComputation], layer: Int, step: inout StepAccount)
    throws(HeteroKVError) -> [HeadComputationResult]
  {
    let mark = ContinuousClock.now
    defer { step.timings.compute += seconds(since: mark) }
    do {
      return try backend.run(
        computations, groupSize: geometry.groupSize,
        scale: FullAttention.scale(headDim: geometry.headDim))
    } catch {
      throw HeteroKVError(.internalError, "sequence \(ref) layer \(layer): \(error)", cause: error)
    }
  }

  /// Takes one head's result into the step: what it answers itself goes to the outputs, its
  /// cache's mass and the counters are updated, and the plan of what it must ask the memory
  /// tier for is returned (nil when nothing).
  private func absorb(
    _ result: HeadComputationResult, layer: Int, head h: Int, queries: [Float],
    withSelection: Bool, step: inout StepAccount
  ) async throws(HeteroKVError) -> HeadPlan? {
    let group = geometry.groupSize
    let d = geometry.headDim
    let q = Array(queries[(h * group * d)..<((h + 1) * group * d)])
    let head = layers[layer].heads[h]
    switch result {
    case .attended(let partial, let mass):
      step.outputs.replaceSubrange(h * group * d..<(h + 1) * group * d, with: partial.outputs)
      let cache = head.cache!
      layers[layer].heads[h].cache!.accumulate(mass)
      step.kept += cache.positions.count * group
      step.workerRead += cache.residentBytes
      if withSelection {
        step.selections[h] = Array(repeating: cache.positions.map(Int32.init), count: group)
      }
      return nil
    case .selected(let scores, let picked):
      // Exact outputs: the group attends its union, so the node reads the rows once.
      let chosen = HCAttentionStep.attended(picked, mode: options.outputMode)
      let shipping = try await shipping(layer: layer, head: h, step: &step)
      let plan = try plan(
        layer: layer, kvHead: h, selections: chosen, queries: q, shipping: shipping)
      step.kept += chosen.reduce(0) { $0 + $1.indices.count }
      step.workerRead += head.index?.residentBytes ?? 0
      if withSelection { step.selections[h] = chosen.map(\.indices) }
      if head.monitor != nil { step.driftChecks.append((h, scores)) }
      var result = HeadPlan(head: h, requests: plan.requests, local: [plan.local])
      if let unkept = head.unkept {  // kept only with exact output
        let attended = chosen.map(\.indices)
        result.deferredLocal = {
          unkept.partial(scores: scores, selections: picked, attended: attended)
        }
      }
      return result
    case .recalled(let partial, let mass, let scores, let picked):
      // The cache answers what it holds; the tier re-scores the rest of the group's set.
      let cache = head.cache!
      layers[layer].heads[h].cache!.accumulate(mass)
      // The group's union is one list; what the cache lacks of it is too (shared storage, so
      // the plan sees one list for the group).
      let union = TauMassSelection.groupUnion(picked)
      let lacking = union[0].excluding(cache.positions)
      let missing = Array(repeating: lacking, count: union.count)
      step.kept += cache.positions.count * group
      step.workerRead += cache.residentBytes + (head.index?.residentBytes ?? 0)
      // What the group attends: its cache and the tokens it recalls.
      // Made here only when asked for; the estimate otherwise makes it once the layer's
      // requests are sent.
      let asked =
        withSelection
        ? TauMassSelection.ascendingUnion(lacking.indices, cache.positions) : nil
      if let asked { step.selections[h] = Array(repeating: asked, count: group) }
      // What the cache and the recalled tokens leave out, estimated (exact output only).
      var estimate: (@Sendable () -> AttentionPartial)?
      if let unkept = head.unkept {
        let recalled = lacking.indices
        let positions = cache.positions
        estimate = {
          let attended = asked ?? TauMassSelection.ascendingUnion(recalled, positions)
          return unkept.partial(
            scores: scores, selections: picked, attended: Array(repeating: attended, count: group))
        }
      }
      guard !lacking.indices.isEmpty else {
        let merged: AttentionPartial
        do {
          merged = try AttentionPartial.merge([partial] + (estimate.map { [$0()] } ?? []))
        } catch {
          throw HeteroKVError(
            .internalError, "sequence \(ref) layer \(layer): merge failed: \(error)", cause: error)
        }
        step.outputs.replaceSubrange(h * group * d..<(h + 1) * group * d, with: merged.outputs)
        return nil
      }
      let shipping = try await shipping(layer: layer, head: h, step: &step)
      let plan = try plan(
        layer: layer, kvHead: h, selections: missing, queries: q, shipping: shipping)
      step.kept += missing.reduce(0) { $0 + $1.indices.count }
      var result = HeadPlan(head: h, requests: plan.requests, local: [plan.local, partial])
      result.deferredLocal = estimate
      return result
    }
  }

  /// The layer's shipping state (asked of the writer once per step), after checking that head
  /// `h` has its rows on some node and dropping the tail rows the tier now holds.
  private func shipping(layer: Int, head h: Int, step: inout StepAccount)
    async throws(HeteroKVError) -> LayerShipping
  {
    if step.shipping == nil {
      step.shipping = await writer.shipping(layer: layer, kvHeads: geometry.kvHeads)
    }
    let shipping = step.shipping!
    if let failure = shipping.failures[h] { throw failure }
    layers[layer].heads[h].trimTail(acknowledged: shipping.acknowledged[h])
    return shipping
  }

  /// The tier's fan-out of one head's requests, its outcome as a value (a child task's).
  private static func ask(
    _ tier: MemoryTierClient, _ requests: [ReplicatedRequest], timeout: Duration?
  ) async -> Result<FanOutAnswer, HeteroKVError> {
    do {
      return .success(try await tier.partialAttention(requests, timeout: timeout))
    } catch {
      return .failure(error)
    }
  }

  /// A fan-out's answer with its failovers counted, or its error named by sequence.
  private func fanOutAnswer(_ result: Result<FanOutAnswer, HeteroKVError>)
    throws(HeteroKVError) -> FanOutAnswer
  {
    switch result {
    case .success(let answer):
      failovers += answer.failovers
      metrics.failedOver(answer.failovers)
      return answer
    case .failure(let error) where error.code == .dataUnavailable:
      throw error.prefixed("sequence \(ref)")
    case .failure(let error):
      throw HeteroKVError(.internalError, "sequence \(ref): \(error)", cause: error)
    }
  }

  /// One near-data attention request with the nodes that can answer it, primary first.
  struct RemoteRequest: Sendable {
    var request: PartialAttentionRequest
    var holders: [String]
    var bytes: Int
  }

  /// Splits a head's kept tokens into requests per shard chunk (tokens the memory tier
  /// holds) and a partial over the rows still on the worker.
  func plan(
    layer: Int, kvHead: Int, selections: [TauMassSelection], queries: [Float],
    shipping: LayerShipping
  ) throws(HeteroKVError) -> (requests: [RemoteRequest], local: AttentionPartial) {
    let acknowledged = shipping.acknowledged[kvHead]
    let group = selections.count
    let d = geometry.headDim
    let exact = options.outputMode == .exact
    var byChunk: [Int: [(tokens: [UInt32], weights: [Float])]] = [:]
    var localTokens = [[Int]](repeating: [], count: group)
    var localWeights = [[Float]](repeating: [], count: group)
    let head = layers[layer].heads[kvHead]
    // A group sharing one selection (exact mode, where weights are not sent) is split into
    // chunks once; in weights mode heads with the same tokens still weigh them differently.
    let shared =
      exact && group > 1
      && selections.dropFirst().allSatisfy { $0.indices == selections[0].indices }
    for (q, sel) in selections.enumerated().prefix(shared ? 1 : group) {
      // Indices ascend: the tokens the tier holds come first, then the worker's tail, and
      // each chunk's tokens are one run, found by binary search, not token by token.
      let indices = sel.indices
      let remoteEnd = Self.firstPosition(in: indices, atLeast: acknowledged, from: 0)
      var k = 0
      while k < remoteEnd {
        let c = writer.chunk(of: Int(indices[k]))
        let end = min(
          remoteEnd,
          Self.firstPosition(in: indices, atLeast: (c + 1) * writer.chunkTokens, from: k + 1))
        byChunk[c, default: Array(repeating: (tokens: [], weights: []), count: group)][q].tokens
          .append(contentsOf: Self.wireTokens(indices[k..<end]))
        byChunk[c]![q].weights.append(contentsOf: sel.weights[k..<end])
        k = end
      }
      localTokens[q] = indices[remoteEnd...].map { Int($0) - head.tailStart }
      localWeights[q] = Array(sel.weights[remoteEnd...])
    }
    if shared {
      for q in 1..<group {
        localTokens[q] = localTokens[0]
        localWeights[q] = localWeights[0]
      }
      for c in byChunk.keys {
        for q in 1..<group { byChunk[c]![q] = byChunk[c]![0] }
      }
    }
    var requests: [RemoteRequest] = []
    for (c, heads) in byChunk.sorted(by: { $0.key < $1.key }) {
      let shard = ref.shard(layer: layer, kvHead: kvHead, chunk: c)
      let last = Int(heads.compactMap { $0.tokens.last }.max() ?? 0)
      let holders = shipping.holders(shard, through: last)
      let request = PartialAttentionRequest(
        shard: shard, mode: exact ? .exact : .weights, headDim: d,
        scale: FullAttention.scale(headDim: d),
        heads: heads.enumerated().map { q, part in
          exact
            ? .exact(tokens: part.tokens, query: Array(queries[q * d..<(q + 1) * d]))
            : .weighted(tokens: part.tokens, weights: part.weights)
        })
      // A list the group's heads share travels once (the encoder's shared-tokens flag).
      let shared = exact && heads.allSatisfy { $0.tokens == heads[0].tokens }
      let tokens = shared ? heads[0].tokens.count : heads.reduce(0) { $0 + $1.tokens.count }
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
      throw HeteroKVError(.internalError, "sequence \(ref) layer \(layer): \(error)", cause: error)
    }
  }

  /// Kept token positions as the wire's token list, converted in one pass over contiguous
  /// storage (the lazy map it replaces went element by element through a generic copy).
  static func wireTokens(_ indices: ArraySlice<Int32>) -> [UInt32] {
    [UInt32](unsafeUninitializedCapacity: indices.count) { out, written in
      indices.withUnsafeBufferPointer { src in
        for i in src.indices { out[i] = UInt32(truncatingIfNeeded: src[i]) }
      }
      written = indices.count
    }
  }

  /// The first position in ascending `indices` at or after `from` whose token is at least
  /// `value` (`indices.count` when none is).
  static func firstPosition(in indices: [Int32], atLeast value: Int, from: Int) -> Int {
    var lo = from
    var hi = indices.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if Int(indices[mid]) < value { lo = mid + 1 } else { hi = mid }
    }
    return lo
  }
}

/// Seconds since `start`.
func seconds(since start: ContinuousClock.Instant) -> Double {
  (ContinuousClock.now - start).inSeconds
}
