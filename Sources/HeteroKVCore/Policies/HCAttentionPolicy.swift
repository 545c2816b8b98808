/// HCAttention: product-quantized keys on the worker (g sub-vectors whose codes fill the
/// budget: 2-byte codes (over 256 centroids) give g = budget x 2d, 25% -> 64 and 12.5% -> 32
/// for d = 128 as in the paper; 1-byte codes twice as many), values offloaded; each step scores every token from the codes,
/// keeps the tau-mass prefix per query head, and the memory tier returns the context vector
/// from the kept indices and weights. Codebooks are trained on the sequence's own prefill
/// (HCAttention's default) or on a calibration sample shared by all sequences.
public struct HCAttentionPolicy: AttentionPolicy {
  public var mode: HCAttentionOutputMode
  public var tau: Float
  public var centroids: Int
  public var iterations: Int
  public var seed: UInt64
  /// Where trained codebooks are shared between policies (the output modes use the same codes).
  public var codebooks: ProductCodebookCache
  /// The calibration sample codebooks train on; nil: the sequence's own prefill.
  public var calibration: CalibrationKeys?
  /// The worker's key index (its codec, exact sinks and window) instead of codes sized to the
  /// budget: the harness then holds and measures what a worker holds.
  public var recipe: KeyIndexRecipe?
  /// Exact mode: the tokens a step does not keep enter the output as their approximate mass
  /// times the head's mean value (`UnkeptTokenEstimate`), as the worker's `unkept_estimate`.
  public var estimatesUnkept = false
  /// Each query head's own kept set or one per KV head, as the worker's `selection`.
  public var scope: SelectionScope = .queryHead
  /// With `recipe`: per budget, the heads (`layer · kvHeads + kvHead`) coded with the recipe's
  /// finer codes, as the worker's `finer_codes` picks them.
  public var finerHeads: [Double: Set<Int>] = [:]
  /// With `recipe`: its codes sized to each budget (`KeyIndexRecipe.fitting`), charging this
  /// many fp16 rows a head holds, as the worker sizes them; nil: the recipe as given.
  public var fitHeldRows: Int?

  public init(
    mode: HCAttentionOutputMode = .renormalized, tau: Float = 0.9, centroids: Int = 4096,
    iterations: Int = 6, seed: UInt64 = 1, codebooks: ProductCodebookCache = .init(),
    calibration: CalibrationKeys? = nil, recipe: KeyIndexRecipe? = nil
  ) {
    self.recipe = recipe
    self.codebooks = codebooks
    self.calibration = calibration
    self.mode = mode
    self.tau = tau
    self.centroids = centroids
    self.iterations = iterations
    self.seed = seed
  }

  public var name: String {
    switch mode {
    case .renormalized: "hcattention"
    case .raw: "hcattention-raw"
    case .exact: "hcattention-exact"
    }
  }

  /// Sub-vectors that give a budget on the worker: codes take g bytes (at most 256 centroids)
  /// or 2g bytes of the 4d of fp16 K+V.
  public static func subvectors(forBudget budget: Double, headDim d: Int, centroids: Int) throws
    -> Int
  {
    let bytesPerCode = centroids <= 256 ? 1 : 2
    let g = Int((budget * Double(4 * d) / Double(bytesPerCode)).rounded())
    guard g > 0, g <= d, d % g == 0 else {
      throw HeteroKVError.unsupported(
        "hcattention: budget \(budget) needs \(g) sub-vectors, which do not divide head dim \(d)")
    }
    return g
  }

  struct Head: HeadPolicyState {
    var index: ApproximateKeyIndex
    let step: HCAttentionStep
    let heads: Int
    let d: Int
    var unkept: UnkeptTokenEstimate?

    mutating func step(_ input: HeadStepInput) throws -> PolicyStepResult {
      let newest = input.keys.rows - 1
      try index.append(input.keys.gather([newest]))
      unkept?.add(input.values.gather([newest]))
      let scores = try index.scores(
        queries: input.queries, heads: heads, scale: FullAttention.scale(headDim: d))
      let picked = try step.select(approximateScores: scores, heads: heads)
      let selections = step.attended(picked)  // as on the worker
      var out = try step.contextVectors(
        selections: selections, queries: input.queries, keys: input.keys, values: input.values)
      if let unkept {
        out = try unkept.completing(
          out, scores: scores, selections: picked, attended: selections.map(\.indices))
      }
      // Up: indices and weights per kept token; down: d floats per head (+ max and sum in
      // exact mode); plus the new token's value (and key, for exact re-scoring).
      let kept = selections.reduce(0) { $0 + $1.indices.count }
      let upload = step.mode == .exact ? 2 * d * 2 : d * 2
      let moved = kept * 8 + heads * (d * 4 + (step.mode == .exact ? 8 : 0)) + upload
      return PolicyStepResult(
        outputs: out.outputs, attended: selections.map(\.indices), bytesMoved: moved)
    }

    var residentBytes: Int { index.residentBytes + (unkept?.byteCount ?? 0) }
  }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    let step = try HCAttentionStep(tau: tau, mode: mode, scope: scope)
    if let recipe {
      let finer = finerHeads[budget] ?? []
      let sized =
        fitHeldRows.map {
          recipe.fitting(
            budget: budget, headDim: geometry.headDim, tokens: layer.heads[0].keys.rows,
            heldRows: $0)
        } ?? recipe
      let heads = try parallelMap(layer.heads.count) { h in
        let head = layer.heads[h]
        let fine = finer.contains(layer.layer * geometry.kvHeads + h)
        var index = try (fine ? sized.finer : sized).index(
          training: head.keys, queries: head.observationQueries, geometry: geometry.name,
          layer: layer.layer, kvHead: h)
        try index.append(head.keys)
        var unkept: UnkeptTokenEstimate?
        if estimatesUnkept && mode == .exact {
          unkept = UnkeptTokenEstimate(headDim: geometry.headDim)
          unkept!.add(head.values)
        }
        return Head(
          index: index, step: step, heads: geometry.groupSize, d: geometry.headDim,
          unkept: unkept)
      }
      return IndependentHeads(heads)
    }
    let g = try Self.subvectors(
      forBudget: budget, headDim: geometry.headDim, centroids: centroids)
    let config = try ProductQuantizerConfiguration(
      subvectors: g, centroids: centroids, iterations: iterations, batchSize: 4096, seed: seed)
    let heads = try parallelMap(layer.heads.count) { h in
      let head = layer.heads[h]
      let version = CodebookVersion(
        geometry: geometry.name, layer: layer.layer, kvHead: h, headDim: geometry.headDim,
        subvectors: g, centroids: centroids,
        calibration: calibration.map { .calibrationSet($0.name) } ?? .ownPrefill)
      let store = try codebooks.prefillStore(
        keys: head.keys, trainingKeys: try calibration?.keys(layer: layer.layer, kvHead: h),
        configuration: config, version: version)
      return Head(
        index: ApproximateKeyIndex(codes: store, sinks: 0, window: 0), step: step,
        heads: geometry.groupSize, d: geometry.headDim)
    }
    return IndependentHeads(heads)
  }
}
