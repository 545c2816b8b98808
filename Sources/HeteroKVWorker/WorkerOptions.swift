import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVWire

/// How a worker keeps and serves its sequences: the model's geometry, the key codec, the
/// budget policy and the shipping and fan-out bounds.
public struct WorkerOptions: Sendable {
  /// The worker's member id (the coordinator records it as the sequences' owner).
  public var id: String
  /// The model served.
  public var geometry: ModelGeometry
  /// Key codec, window, sinks and tau (the cluster file's `worker` section).
  public var settings: WorkerSettings
  /// The budget policy (must match the coordinator's).
  public var policy: BudgetPolicyKind
  /// HeteroCache's thresholds and sizes for profiling and drift checks.
  public var heteroCache: HeteroCacheConfiguration
  /// HeteroCache: compressed heads keep their key codes and recall, each step, the tokens of
  /// their tau-mass set the cache lacks (`BudgetSettings.recall`; exact output mode).
  public var recall = false
  /// How kept tokens become the context vector: `renormalized` (weights sent to the memory
  /// nodes; values only on the memory tier for HCAttention) or `exact` (queries sent; the
  /// memory tier re-scores with its fp16 keys).
  public var outputMode: HCAttentionOutputMode
  /// Tokens per shard: a KV head's context is cut into chunks of this many tokens, each
  /// placed on its own nodes.
  public var chunkTokens: Int
  /// Prefill keys a head's codebook is trained on: held until this many arrive (spread evenly
  /// when one chunk brings more), or all of a shorter prefill at the first attend.
  public var codebookTrainingKeys = 32768
  /// Bytes of rows in flight to the memory tier before appends wait.
  public var shipQueueBytes: Int
  /// Decode tokens batched into one put per head.
  public var decodeShipRows: Int
  /// The default of `decodeShipRows`: what an in-process cluster charges each head for rows it
  /// holds before shipping.
  public static let defaultDecodeShipRows = 32
  /// Deadline of one memory-node request.
  public var requestTimeout: Duration
  /// When a put counts as stored: every live replica (default) or one.
  public var acknowledgement: ReplicaAcknowledgement = .allLive
  /// How often sequences whose copies may be short (a node marked down, a shard
  /// under-replicated) fetch their placement and repair; every tenth check fetches it anyway.
  public var replicaCheckInterval: Duration = .seconds(1)
  /// What the worker proves on each data-plane connection: the cluster token (tenant
  /// `cluster`) where the cluster file sets one; none for an open cluster.
  public var dataPlaneCredential: DataPlaneCredential?

  public init(
    id: String, geometry: ModelGeometry, settings: WorkerSettings = WorkerSettings(),
    policy: BudgetPolicyKind = .heterocache,
    heteroCache: HeteroCacheConfiguration = HeteroCacheConfiguration(),
    outputMode: HCAttentionOutputMode? = nil, chunkTokens: Int = 128 << 10,
    shipQueueBytes: Int = 256 << 20, decodeShipRows: Int = WorkerOptions.defaultDecodeShipRows,
    requestTimeout: Duration = .seconds(10)
  ) {
    self.id = id
    self.geometry = geometry
    self.settings = settings
    self.policy = policy
    self.heteroCache = heteroCache
    self.outputMode = outputMode ?? settings.outputMode
    self.chunkTokens = chunkTokens
    self.shipQueueBytes = shipQueueBytes
    self.decodeShipRows = decodeShipRows
    self.requestTimeout = requestTimeout
  }

  /// Options for worker `id` from a cluster file: its model, `worker` and `budgets` sections.
  public init(cluster: ClusterConfiguration, id: String) throws(HeteroKVError) {
    guard let model = cluster.model else {
      throw HeteroKVError(.invalidArgument, "the cluster file has no model section")
    }
    self.init(
      id: id, geometry: model, settings: cluster.worker, policy: cluster.budgets.policy,
      heteroCache: cluster.budgets.heteroCache, outputMode: cluster.worker.outputMode)
    acknowledgement = cluster.worker.ackReplicas
    recall = cluster.budgets.recall
    // hcattention with finer codes, and heterocache's recall, size the codes to the budget.
    switch cluster.budgets.policy {
    case .hcattention where cluster.worker.finerCodes, .heterocache where recall:
      codeBudget = cluster.budgets.memoryFraction
    default: break
    }
  }

  /// How many of `heads` coded heads get finer codes after an `n`-token prefill: the budget
  /// left over the coarse index's share and the decode rows a head holds before it ships them
  /// (`decodeShipRows`, fp16), over what finer codes add per head (hcattention with
  /// `finer_codes` only).
  func finerCodeHeads(_ heads: Int, prefillTokens n: Int) -> Int {
    guard let budget = codeBudget, settings.finerCodes, policy == .hcattention else { return 0 }
    return keyIndexRecipe(tokens: n).finerCodeHeads(
      heads, budget: budget, headDim: geometry.headDim, prefillTokens: n,
      heldRows: decodeShipRows)
  }

  /// The share of fp16 K/V the key codes are sized to (the memory fraction, for hcattention
  /// with `finer_codes` and for heterocache with recall): the recipe's pq codes are coarsened until they fit it
  /// (`KeyIndexRecipe.fitting`), and with `finer_codes` what they leave buys finer codes for
  /// the heads they reconstruct worst. nil: the recipe as configured.
  public var codeBudget: Double?

  /// The key-index recipe heads of an `n`-token prefill are coded with: the configured one,
  /// sized to `codeBudget` when there is one.
  func keyIndexRecipe(tokens n: Int) -> KeyIndexRecipe {
    var recipe = settings.keyIndex
    recipe.trainingKeys = codebookTrainingKeys
    guard let codeBudget else { return recipe }
    return recipe.fitting(
      budget: codeBudget, headDim: geometry.headDim, tokens: n, heldRows: decodeShipRows)
  }

  /// Whether heads keep the value sum that estimates the tokens a step leaves out: exact
  /// output with `unkept_estimate`.
  var estimatesUnkept: Bool { settings.unkeptEstimate && outputMode == .exact }

  /// Whether compressed heads recall from the memory tier (HeteroCache with recall on).
  var recalls: Bool { policy == .heterocache && recall }

  /// Whether the memory tier keeps keys as well as values: for exact re-scoring, and for the
  /// compressed heads HeteroCache builds and refreshes from it.
  var shipsKeys: Bool { outputMode == .exact || policy != .hcattention }

  /// Checks what the worker cannot run with.
  func validate() throws(HeteroKVError) {
    guard outputMode != .raw else {
      throw HeteroKVError(
        .invalidArgument, "output mode raw is an evaluation baseline; use renormalized or exact")
    }
    guard !recalls || outputMode == .exact else {
      throw HeteroKVError(
        .invalidArgument,
        "budgets.recall merges a compressed head's exact cache with re-scored tokens from the "
          + "memory tier: it needs worker.output_mode exact (or budgets.recall false)")
    }
    guard chunkTokens > 0, shipQueueBytes > 0, decodeShipRows > 0 else {
      throw HeteroKVError(
        .invalidArgument, "chunk tokens, ship queue and decode batch must be positive")
    }
    let tau = settings.tau(for: policy)
    guard tau > 0, tau <= 1 else {
      throw HeteroKVError(.invalidArgument, "tau \(tau) is outside (0, 1]")
    }
    guard geometry.headDim % settings.groupSize == 0 || settings.keyCodec == .scalar else {
      throw HeteroKVError(
        .invalidArgument,
        "group size \(settings.groupSize) does not divide head dim \(geometry.headDim)")
    }
  }

  /// An empty key index of the configured recipe for one head, trained (pq) on `keys`.
  func keyIndex(
    training keys: HalfMatrix, queries: [Float]?, layer: Int, kvHead: Int,
    recipe chosen: KeyIndexRecipe? = nil
  ) throws -> ApproximateKeyIndex {
    let recipe = chosen ?? keyIndexRecipe(tokens: keys.rows)
    return try recipe.index(
      training: keys, queries: queries, geometry: geometry.name, layer: layer, kvHead: kvHead)
  }

  /// The rows of KV head `kvHead`'s query group in observation queries
  /// `[rows][queryHeads][d]`, as `[rows · groupSize][d]`; nil when there are none.
  func groupQueries(_ observation: [Float], kvHead: Int) -> [Float]? {
    let width = geometry.queryHeads * geometry.headDim
    guard !observation.isEmpty, observation.count % width == 0 else { return nil }
    let span = geometry.groupSize * geometry.headDim
    var rows = [Float]()
    rows.reserveCapacity(observation.count / geometry.kvHeads)
    for r in stride(from: 0, to: observation.count, by: width) {
      let first = r + kvHead * span
      rows += observation[first..<(first + span)]
    }
    return rows
  }
}
