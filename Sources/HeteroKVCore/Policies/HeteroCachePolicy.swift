/// HeteroCache on HeteroKV: roles and budgets from a calibration profile; anchor and satellite
/// heads attend exactly over compressed caches on the worker; pivot and volatile heads keep
/// their full context in the memory tier and go through the HCAttention path on scalar key
/// codes; pivots check drift every few steps and refresh their satellites' caches, applied at
/// the next step.
public struct HeteroCachePolicy: AttentionPolicy {
  /// Profiles of every head of every layer (from calibration).
  public var profiles: [HeadProfile]
  public var configuration: HeteroCacheConfiguration
  public var tau: Float
  /// Fewest tokens a compressed head keeps (ours; see `BudgetAllocator`).
  public var minimumCap: Int
  /// First tokens a compressed head always keeps (attention sinks).
  public var sinks: Int
  /// Recent tokens a compressed head always keeps (at most a quarter of its cap).
  public var window: Int
  /// The worker's key index for the full heads (and, with `recall`, the compressed ones), with
  /// exact output; nil: scalar codes sized to the budget and renormalized weights.
  public var recipe: KeyIndexRecipe?
  /// Compressed heads keep codes too and attend exactly over their cache and the tokens of
  /// their tau-mass set it lacks (needs `recipe`), as the worker's `budgets.recall`.
  public var recall = false
  /// Exact output: heads with codes estimate the tokens a step leaves out
  /// (`UnkeptTokenEstimate`), as the worker's `unkept_estimate`.
  public var estimatesUnkept = false
  /// Each query head's own kept set or one per KV head, as the worker's `selection`.
  public var scope: SelectionScope = .queryHead
  /// With `recipe` and `recall`: its codes sized to each budget (`KeyIndexRecipe.fitting`),
  /// charging this many fp16 rows a head holds, as the worker sizes them; nil: as given.
  public var fitHeldRows: Int?

  public init(
    profiles: [HeadProfile], configuration: HeteroCacheConfiguration, tau: Float = 0.9,
    minimumCap: Int = 64, sinks: Int = 4, window: Int = 64
  ) {
    self.profiles = profiles
    self.configuration = configuration
    self.tau = tau
    self.minimumCap = minimumCap
    self.sinks = sinks
    self.window = window
  }

  public var name: String { "heterocache" }

  /// Worker cost of a full-context head's key codes (4-bit, group 64, window 128) as a share
  /// of fp16 K+V, and the bit width: 4 bits when full heads leave a quarter of the budget to
  /// the compressed heads, else 2 bits.
  static func fullHeadKeys(
    budget: Double, fullHeads: Int, totalHeads: Int, headDim d: Int, tokens n: Int
  ) throws -> (configuration: ScalarQuantizerConfiguration, cost: Double) {
    for bits in [4, 2] {
      let config = try ScalarQuantizerConfiguration(bits: bits, groupSize: 64, window: 128)
      let cost = codeShare(config, headDim: d, tokens: n)
      if Double(fullHeads) * cost <= 0.75 * budget * Double(totalHeads) { return (config, cost) }
    }
    throw HeteroKVError.unsupported(
      "heterocache: budget \(budget) cannot hold the key codes of \(fullHeads) of \(totalHeads) "
        + "full-context heads")
  }

  /// Bytes of a scalar key store per token as a share of fp16 K+V: codes, per-group scales and
  /// zero points, and the fp16 window spread over the context.
  static func codeShare(_ c: ScalarQuantizerConfiguration, headDim d: Int, tokens n: Int) -> Double
  {
    let perToken = Double(d * c.bits / 8) + Double(2 * d * 2) / Double(c.groupSize)
    let window = Double(min(n, c.window)) * Double(d * 2) / Double(n)
    return (perToken + window) / Double(4 * d)
  }

  struct State: PolicyLayerState {
    enum Head {
      /// A compressed cache, and its codes when it recalls.
      case compressed(CompressedHeadCache, ApproximateKeyIndex?)
      case full(ApproximateKeyIndex, PivotDriftMonitor?)
    }
    var heads: [Head]
    let roles: [HeadRole]
    let caps: [Int]
    let prefillTokens: Int
    let step: HCAttentionStep
    let groupSize: Int
    let d: Int
    var pendingRefresh: [Int: [Int]] = [:]
    var retrievalSteps = 0
    /// Per head, the running value sum of a head with codes in exact mode, when estimating.
    var unkept: [UnkeptTokenEstimate?]

    mutating func step(_ inputs: [HeadStepInput]) throws -> [PolicyStepResult] {
      let refreshes = pendingRefresh
      pendingRefresh = [:]
      var results: [PolicyStepResult] = []
      var drifted = false
      for (h, input) in inputs.enumerated() {
        let newest = input.keys.rows - 1
        let upload = kvBytes(tokens: 1, headDim: d)
        unkept[h]?.add(input.values.gather([newest]))
        switch heads[h] {
        case .compressed(var cache, var index):
          if let positions = refreshes[h] {
            let prefix = try CompressedHeadCache(
              positions: positions, keys: input.keys, values: input.values)
            cache = try cache.keepingRows(from: prefillTokens, after: prefix)
          }
          try cache.append(
            key: input.keys.row(newest), value: input.values.row(newest), position: newest)
          var (out, drawn) = try cache.attendWeighing(queries: input.queries, heads: groupSize)
          var attended = cache.positions.map(Int32.init)
          var moved = upload
          if var codes = index {
            // Recall: the tau-mass set's tokens the cache lacks join it, exactly re-scored.
            try codes.append(input.keys.gather([newest]))
            index = codes
            let scores = try codes.scores(
              queries: input.queries, heads: groupSize, scale: FullAttention.scale(headDim: d))
            let picked = try step.select(approximateScores: scores, heads: groupSize)
            let union = TauMassSelection.groupUnion(picked)[0]
            let missing = union.excluding(cache.positions).indices
            if !missing.isEmpty {
              attended = TauMassSelection.ascendingUnion(missing, cache.positions)
              let rows = attended.map(Int.init)
              out = try FullAttention.attend(
                queries: input.queries, heads: groupSize, keys: input.keys.gather(rows),
                values: input.values.gather(rows))
              moved += missing.count * 4 + groupSize * (d * 8 + 8)
            }
            if let estimate = unkept[h] {
              out = try estimate.completing(
                out, scores: scores, selections: picked,
                attended: Array(repeating: attended, count: groupSize))
            }
          }
          cache.accumulate(drawn)
          heads[h] = .compressed(cache, index)
          results.append(
            PolicyStepResult(
              outputs: out.outputs, attended: Array(repeating: attended, count: groupSize),
              bytesMoved: moved))
        case .full(var store, var monitor):
          try store.append(input.keys.gather([newest]))
          let scores = try store.scores(
            queries: input.queries, heads: groupSize, scale: FullAttention.scale(headDim: d))
          let picked = try step.select(approximateScores: scores, heads: groupSize)
          let selections = step.attended(picked)  // as on the worker
          var out = try step.contextVectors(
            selections: selections, queries: input.queries,
            keys: step.mode == .exact ? input.keys : nil, values: input.values)
          if let estimate = unkept[h] {
            out = try estimate.completing(
              out, scores: scores, selections: picked, attended: selections.map(\.indices))
          }
          var moved =
            selections.reduce(0) { $0 + $1.indices.count } * 8 + groupSize * d * 4 + upload
          // Pivots turn their approximate scores into probabilities on check steps only.
          if var watch = monitor {
            defer { monitor = watch }
            if let drift = watch.check(step: input.step, scores: scores, heads: groupSize) {
              drifted = true
              for (s, role) in roles.enumerated() {
                guard case .satellite(let pivot) = role, pivot == h else { continue }
                guard case .compressed(let satellite, _) = heads[s] else { continue }
                let decoded = satellite.positions.count(where: { $0 >= prefillTokens })
                pendingRefresh[s] = HeteroCacheDecodeState.refreshedPrefix(
                  drift: drift, prefillTokens: prefillTokens, cap: max(1, caps[s] - decoded))
                moved += kvBytes(tokens: caps[s], headDim: d)
              }
            }
          }
          heads[h] = .full(store, monitor)
          results.append(
            PolicyStepResult(
              outputs: out.outputs, attended: selections.map(\.indices), bytesMoved: moved))
        }
      }
      if drifted { retrievalSteps += 1 }
      return results
    }

    var residentBytes: Int {
      heads.reduce(0) { total, head in
        switch head {
        case .compressed(let cache, let index):
          total + cache.residentBytes + (index?.residentBytes ?? 0)
        case .full(let index, _): total + index.residentBytes
        }
      } + unkept.reduce(0) { $0 + ($1?.byteCount ?? 0) }
    }
  }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    let n = layer.heads[0].keys.rows
    let mine = profiles.filter { $0.layer == layer.layer }.sorted { $0.kvHead < $1.kvHead }
    guard mine.count == layer.heads.count else {
      throw HeteroKVError.dimension(
        "heterocache: \(mine.count) profiles for layer \(layer.layer), which has "
          + "\(layer.heads.count) KV heads")
    }
    let fullCount = profiles.filter { $0.role.keepsFullContext }.count
    let scalar: ScalarQuantizerConfiguration?
    let cost: Double
    // As the worker: recall sizes the codes to the budget, where the sized codes fit it.
    let recipe = self.recipe.map { r in
      guard recall, let held = fitHeldRows else { return r }
      let sized = r.fitting(budget: budget, headDim: geometry.headDim, tokens: n, heldRows: held)
      return sized.share(headDim: geometry.headDim, tokens: n) < budget ? sized : r
    }
    if let recipe {
      scalar = nil
      cost = recipe.share(headDim: geometry.headDim, tokens: n)
    } else {
      (scalar, cost) = try Self.fullHeadKeys(
        budget: budget, fullHeads: fullCount, totalHeads: profiles.count,
        headDim: geometry.headDim, tokens: n)
    }
    // As in-process clusters plan (`BudgetSettings.chargingKeyCodes`): recall only where every
    // head's codes fit under the budget, static caches below it.
    let recalls = recall && recipe != nil && cost < budget
    let budgets = try BudgetAllocator.allocate(
      profiles: profiles, memoryRatio: budget, prefillTokens: n, fullHeadCost: cost,
      minimumCap: minimumCap, compressedHeadCost: recalls ? cost : 0)
    let driftBudget = HeteroCacheDecodeState.driftBudget(
      compressedCaps: budgets.filter { !$0.role.keepsFullContext }.map(\.cap), prefillTokens: n)
    let caps = mine.map { p in budgets.first { $0.layer == p.layer && $0.kvHead == p.kvHead }!.cap }
    let g = geometry.groupSize
    // The worker's index (trained on the head's prefill) or scalar codes sized to the budget.
    @Sendable func codes(_ h: Int) throws -> ApproximateKeyIndex {
      let keys = layer.heads[h].keys
      var index =
        if let recipe {
          try recipe.index(
            training: keys, queries: layer.heads[h].observationQueries, geometry: geometry.name,
            layer: layer.layer, kvHead: h)
        } else {
          ApproximateKeyIndex(
            codes: try ScalarQuantizedKeyStore(headDim: geometry.headDim, configuration: scalar!),
            sinks: 0, window: 0)
        }
      try index.append(keys)
      return index
    }
    let heads: [State.Head] = try parallelMap(layer.heads.count) { h in
      let head = layer.heads[h]
      let p = try FullAttention.probabilities(
        queries: head.lastQuery(groupSize: g), heads: g, keys: head.keys)
      switch mine[h].role {
      case .anchor, .satellite:
        let positions = HeteroCacheDecodeState.compressedPrefix(
          votes: p, groupSize: g, prefillTokens: n, cap: caps[h],
          poolWidth: configuration.poolWidth, sinks: sinks,
          recent: HeteroCacheDecodeState.recentTokens(window: window, cap: caps[h]))
        var cache = try CompressedHeadCache(
          positions: positions, rows: head.keys.gather(positions),
          values: head.values.gather(positions),
          mass: HeteroCacheDecodeState.seedMass(votes: p, groupSize: g, positions: positions))
        HeteroCacheDecodeState.holdBudget(
          &cache, cap: caps[h], prefillTokens: n, sinks: sinks, window: window)
        return .compressed(cache, recalls ? try codes(h) : nil)
      case .pivot, .volatile:
        return .full(
          try codes(h),
          HeteroCacheDecodeState.driftMonitor(
            role: mine[h].role, probabilities: p, groupSize: g, budget: driftBudget,
            configuration: configuration))
      }
    }
    let unkept: [UnkeptTokenEstimate?] = heads.indices.map { h in
      guard estimatesUnkept, recipe != nil else { return nil }
      if case .compressed(_, nil) = heads[h] { return nil }
      var estimate = UnkeptTokenEstimate(headDim: geometry.headDim)
      estimate.add(layer.heads[h].values)
      return estimate
    }
    return State(
      heads: heads, roles: mine.map(\.role), caps: caps, prefillTokens: n,
      step: try HCAttentionStep(
        tau: tau, mode: recipe == nil ? .renormalized : .exact, scope: scope),
      groupSize: g, d: geometry.headDim, unkept: unkept)
  }
}
