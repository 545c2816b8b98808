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
    let scale = FullAttention.scale(headDim: d)
    let tau = Float(options.settings.tau)
    let state = layers[layer]
    let computations: [HeadComputation] = state.heads.enumerated().map { h, head in
      let q = Array(queries[(h * group * d)..<((h + 1) * group * d)])
      if let cache = head.cache {
        if let index = head.index {
          return .recall(index: index, cache: cache, queries: q, tau: tau)
        }
        return .attend(cache: cache, queries: q)
      }
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
      throw HeteroKVError(.internalError, "sequence \(ref) layer \(layer): \(error)", cause: error)
    }
    var outputs = [Float](repeating: 0, count: queries.count)
    var selections: [[Int32]] = []
    var moved = 0
    var kept = 0
    var workerRead = 0
    // Remote work of every full head, fanned out together.
    var plans: [(head: Int, requests: [RemoteRequest], local: [AttentionPartial])] = []
    // What the tier holds of this layer, asked once and only when a full head needs it.
    var shipping: LayerShipping?
    for (h, result) in results.enumerated() {
      let q = Array(queries[(h * group * d)..<((h + 1) * group * d)])
      switch result {
      case .attended(let partial, let mass):
        outputs.replaceSubrange(h * group * d..<(h + 1) * group * d, with: partial.outputs)
        let cache = state.heads[h].cache!
        layers[layer].heads[h].cache!.accumulate(mass)
        kept += cache.positions.count * group
        workerRead += cache.residentBytes
        if withSelection {
          let positions = cache.positions.map(Int32.init)
          selections += Array(repeating: positions, count: group)
        }
      case .selected(let scores, let picked):
        // Exact outputs: the group attends its union, so the node reads the rows once.
        let chosen =
          options.outputMode == .exact ? TauMassSelection.groupUnion(picked) : picked
        if shipping == nil { shipping = await writer.shipping(layer: layer, kvHeads: g.kvHeads) }
        let shipping = shipping!
        if let failure = shipping.failures[h] { throw failure }
        let ack = shipping.acknowledged[h]
        layers[layer].heads[h].trimTail(acknowledged: ack)
        let plan = try plan(
          layer: layer, kvHead: h, selections: chosen, queries: q, shipping: shipping)
        plans.append((h, plan.requests, [plan.local]))
        kept += chosen.reduce(0) { $0 + $1.indices.count }
        workerRead += state.heads[h].index?.residentBytes ?? 0
        if withSelection { selections += chosen.map(\.indices) }
        watchDrift(layer: layer, kvHead: h, scores: scores)
      case .recalled(let partial, let mass, _, let picked):
        // The cache answers what it holds; the tier re-scores the rest of the group's set.
        let cache = state.heads[h].cache!
        layers[layer].heads[h].cache!.accumulate(mass)
        let missing = TauMassSelection.groupUnion(picked).map { $0.excluding(cache.positions) }
        kept += cache.positions.count * group
        workerRead += cache.residentBytes + (state.heads[h].index?.residentBytes ?? 0)
        if withSelection {
          selections += missing.map { sel in
            Array(Set(sel.indices).union(cache.positions.lazy.map(Int32.init))).sorted()
          }
        }
        guard missing.contains(where: { !$0.indices.isEmpty }) else {
          outputs.replaceSubrange(h * group * d..<(h + 1) * group * d, with: partial.outputs)
          continue
        }
        if shipping == nil { shipping = await writer.shipping(layer: layer, kvHeads: g.kvHeads) }
        let shipping = shipping!
        if let failure = shipping.failures[h] { throw failure }
        layers[layer].heads[h].trimTail(acknowledged: shipping.acknowledged[h])
        let plan = try plan(
          layer: layer, kvHead: h, selections: missing, queries: q, shipping: shipping)
        plans.append((h, plan.requests, [plan.local, partial]))
        kept += missing.reduce(0) { $0 + $1.indices.count }
      }
    }
    timings.plan = seconds(since: mark)
    mark = .now
    let answers = try await fanOut(plans.flatMap(\.requests))
    timings.fanOut = seconds(since: mark)
    mark = .now
    var cursor = 0
    for plan in plans {
      let parts = Array(answers[cursor..<(cursor + plan.requests.count)]) + plan.local
      cursor += plan.requests.count
      moved += plan.requests.reduce(0) { $0 + $1.bytes }
      do {
        let merged = try AttentionPartial.merge(parts)
        outputs.replaceSubrange(
          plan.head * group * d..<(plan.head + 1) * group * d, with: merged.outputs)
      } catch {
        throw HeteroKVError(
          .internalError, "sequence \(ref) layer \(layer): merge failed: \(error)", cause: error)
      }
    }
    timings.merge = seconds(since: mark)
    layers[layer].decodeStep += 1
    if layer == 0 { decodeSteps += 1 }
    bytesMoved += moved
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
          .append(contentsOf: indices[k..<end].lazy.map { UInt32(truncatingIfNeeded: $0) })
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

  /// The tier's fan-out with failover, its failovers counted, its errors named by sequence.
  func fanOut(_ requests: [RemoteRequest]) async throws(HeteroKVError) -> [AttentionPartial] {
    do {
      let answer = try await tier.partialAttention(
        requests.map { ReplicatedRequest($0.request, holders: $0.holders) },
        timeout: options.requestTimeout)
      failovers += answer.failovers
      metrics.failedOver(answer.failovers)
      return answer.partials
    } catch  where error.code == .dataUnavailable {
      throw error.prefixed("sequence \(ref)")
    } catch {
      throw HeteroKVError(.internalError, "sequence \(ref): \(error)", cause: error)
    }
  }
}

/// Seconds since `start`.
func seconds(since start: ContinuousClock.Instant) -> Double {
  (ContinuousClock.now - start).inSeconds
}
