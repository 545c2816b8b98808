import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

// The end of the prefill: profiles, the coordinator's budgets, each head's decode state.
extension SequenceSession {
  // MARK: Prefill end: profiles, budgets, caches

  /// Ends the prefill, whose length is the shortest layer's (an engine appends a layer's
  /// first decode token just before attending it, so earlier layers may be a token ahead).
  /// Waits for the rows to reach the memory tier, profiles the heads, reports to the
  /// coordinator, and builds each head's decode state from its budget.
  func seal() async throws(HeteroKVError) {
    let g = geometry
    let n = layers.map(\.tokens).min() ?? 0
    if let l = layers.firstIndex(where: { $0.tokens == 0 }) {
      throw HeteroKVError(
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
    let (profiles, observed) = try profileHeads(prefillTokens: n)
    let budgets = try await control.reportProfiles(ref, prefillTokens: n, profiles: profiles)
    guard budgets.policy == options.policy else {
      throw HeteroKVError(
        .failedPrecondition,
        "the coordinator budgets with policy \(budgets.policy.rawValue), this worker runs "
          + "\(options.policy.rawValue): give both the same cluster file")
    }
    var caps: [HeadKey: HeadBudget] = [:]
    for b in budgets.heads { caps[HeadKey(layer: b.layer, kvHead: b.kvHead)] = b }
    let driftBudget = HeteroCacheDecodeState.driftBudget(
      compressedCaps: budgets.heads.filter { !$0.role.keepsFullContext }.map(\.cap),
      prefillTokens: n)
    for l in 0..<g.layers {
      for h in 0..<g.kvHeads {
        guard let budget = caps[HeadKey(layer: l, kvHead: h)] else {
          throw HeteroKVError(
            .unavailable, "the coordinator sent no budget for layer \(l) head \(h)")
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
        let attention = observed[l][h]
        let length = layers[l].tokens
        if compressed {
          // The sinks, the window's worth of recent tokens (a quarter of the cap at most) and
          // the positions the observation queries voted for; without queries, recent tokens.
          let sinks = options.settings.sinks
          let recent = HeteroCacheDecodeState.recentTokens(
            window: options.settings.window, cap: head.cap)
          var positions: [Int]
          var mass: [Float]
          if let attention {
            positions = HeteroCacheDecodeState.compressedPrefix(
              votes: attention.votes, groupSize: g.groupSize, prefillTokens: n, cap: head.cap,
              poolWidth: options.heteroCache.poolWidth, sinks: sinks, recent: recent)
            mass = HeteroCacheDecodeState.seedMass(
              votes: attention.votes, groupSize: g.groupSize, positions: positions)
          } else {
            let first = min(sinks, head.cap)
            positions = Array(0..<first) + Array(max(first, n - (head.cap - first))..<n)
            mass = [Float](repeating: 0, count: positions.count)
          }
          // Tokens appended after the prefill (a decode token ahead of the first attend).
          positions += Array(n..<length)
          mass += [Float](repeating: 0, count: length - n)
          let (keys, values) = try await gatherRows(layer: l, kvHead: h, positions: positions)
          do {
            var cache = try CompressedHeadCache(
              positions: positions, rows: keys, values: values, mass: mass)
            // Decode tokens come inside the budget, a share of the context: it grows by
            // cap/n rows a token, and past it the least-attended row goes.
            HeteroCacheDecodeState.holdBudget(
              &cache, cap: head.cap, prefillTokens: n, decodedTokens: length - n, sinks: sinks,
              window: options.settings.window)
            head.cache = cache
          } catch {
            throw HeteroKVError(
              .internalError, "sequence \(ref) layer \(l) head \(h): \(error)", cause: error)
          }
          if !options.recalls {
            head.index = nil
            head.unkept = nil
          }
        } else if options.policy == .heterocache, let attention {
          head.monitor = HeteroCacheDecodeState.driftMonitor(
            role: budget.role, probabilities: attention.last, groupSize: g.groupSize,
            budget: driftBudget,
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
  func trainHeldKeys() throws(HeteroKVError) {
    let g = geometry
    let boxes = layers.flatMap { $0.heads.map(IndexBox.init) }
    let options = self.options
    let held = boxes.map(\.untrained)
    let queries = boxes.indices.map { i in
      options.groupQueries(layers[i / g.kvHeads].observation, kvHead: i % g.kvHeads)
    }
    // The budget left over the codes buys finer codes for the worst-reconstructed heads.
    let finer = options.finerCodeHeads(
      held.count(where: { $0 != nil }), prefillTokens: held.compactMap { $0?.rows }.min() ?? 0)
    do {
      let errors = try parallelMap(boxes.count) { i in
        try boxes[i].trainHeld(
          options: options, layer: i / g.kvHeads, kvHead: i % g.kvHeads, queries: queries[i])
        return finer > 0 ? held[i].map { boxes[i].reconstructionError($0) } ?? 0 : 0
      }
      if finer > 0 {
        let picks = KeyIndexRecipe.finerCodePicks(errors: errors, count: finer) {
          held[$0] != nil
        }
        _ = try parallelMap(picks.count) { k in
          let i = picks[k]
          try boxes[i].trainIndex(
            held[i]!, options: options, layer: i / g.kvHeads, kvHead: i % g.kvHeads,
            queries: queries[i], recipe: options.keyIndexRecipe(tokens: held[i]!.rows).finer)
        }
      }
    } catch {
      poisoned = HeteroKVError(
        .internalError, "sequence \(ref): coding keys failed, the sequence is unusable: \(error)",
        cause: error)
      throw poisoned!
    }
    for (i, box) in boxes.enumerated() {
      layers[i / g.kvHeads].heads[i % g.kvHeads].index = box.index
      layers[i / g.kvHeads].heads[i % g.kvHeads].untrainedKeys = box.untrained
    }
  }

  /// What the observation queries of one head attended to (approximate probabilities, each
  /// `[groupSize][length]`): the last row's, and every row's summed.
  struct ObservedAttention {
    var last: [Float]
    var votes: [Float]
  }

  /// Profiles of every head from each layer's observation queries (HeteroCache; the first
  /// row stands for the prefill, the later rows for decode steps), and what each head's
  /// queries attended to, where queries were given. Without queries (other policies) every
  /// head reports as the policy treats it.
  func profileHeads(prefillTokens n: Int) throws(HeteroKVError)
    -> ([HeadProfile], [[ObservedAttention?]])
  {
    let g = geometry
    let group = g.groupSize
    let d = g.headDim
    var profiles: [HeadProfile] = []
    var observed: [[ObservedAttention?]] = []
    for (l, layer) in layers.enumerated() {
      let rows = layer.observationRows
      if options.policy == .heterocache && rows < 2 && calibrated == nil {
        throw HeteroKVError(
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
        observed.append(Array(repeating: nil, count: g.kvHeads))
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
        observed.append(
          perHead.map {
            ObservedAttention(last: $0[w - 1], votes: HeteroCacheDecodeState.votes($0))
          })
      } catch {
        throw HeteroKVError(
          .invalidArgument, "sequence \(ref) layer \(l): profiling failed: \(error)", cause: error)
      }
    }
    return (profiles, observed)
  }

  /// K/V rows of `positions` (ascending, all stored on the memory tier) of one head.
  func gatherRows(layer: Int, kvHead: Int, positions: [Int]) async throws(HeteroKVError)
    -> (HalfMatrix, HalfMatrix)
  {
    let d = geometry.headDim
    var keys = HalfMatrix(cols: d)
    var values = HalfMatrix(cols: d)
    var byChunk: [Int: [UInt32]] = [:]
    for p in positions { byChunk[writer.chunk(of: p), default: []].append(UInt32(p)) }
    for (c, tokens) in byChunk.sorted(by: { $0.key < $1.key }) {
      let shard = ref.shard(layer: layer, kvHead: kvHead, chunk: c)
      let holders = tier.healthyFirst(await writer.holders(shard, through: Int(tokens.last!)))
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
        throw HeteroKVError(
          .dataUnavailable,
          "sequence \(ref): rows of shard \(shard) are on no reachable memory node"
            + (tried.isEmpty ? "" : "; tried \(tried.joined(separator: ", "))"))
      }
      do {
        try keys.append(contentsOf: HalfMatrix(halves: k, cols: d))
        try values.append(contentsOf: HalfMatrix(halves: answer.valueArray, cols: d))
      } catch {
        throw HeteroKVError(
          .internalError, "sequence \(ref): gathered rows do not fit: \(error)", cause: error)
      }
    }
    return (keys, values)
  }
}
