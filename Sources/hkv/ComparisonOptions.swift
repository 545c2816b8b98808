import ArgumentParser
import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVModel
import HeteroKVWorker

/// The cache policies `hkv needle` and `hkv fidelity` compare, and the knobs of the HeteroKV
/// clusters they start in this process.
struct ComparisonOptions: ParsableArguments {
  @Option(
    name: .customLong("policies"),
    help: "Policies: full, heterocache, hcattention, uniform; comma-separated.")
  var policyNames: String = "full,heterocache,hcattention"

  @Option(help: "Memory budget of the HeteroKV policies (share of fp16 K/V on the worker).")
  var budget: Double = 0.125

  @OptionGroup var settings: CacheSettingsOptions

  @Option(
    help:
      "Calibrate head profiles on this text first (HeteroCache's offline profiling: its first --calibration-tokens tokens, then 32 more fed one by one); without it the worker profiles heads from the prompt's last queries."
  )
  var calibrationFile: String?

  @Option(help: "Prompt tokens of the calibration run.")
  var calibrationTokens: Int = 2048

  @Option(
    help:
      "Compare against the worker of this running cluster (its cluster file sets the policy) instead of clusters started here."
  )
  var cluster: String?

  /// How each in-process cluster's worker reaches its memory nodes.
  enum DataPlane: String, ExpressibleByArgument, CaseIterable {
    /// Loopback TCP, as a worker reaches nodes on other hosts.
    case tcp
    /// Without sockets, as a worker reaches values offloaded to its own host's memory.
    case colocated
  }

  @Option(
    help:
      "How each in-process cluster's worker reaches its memory nodes: tcp (loopback sockets, as nodes on other hosts) or colocated (no sockets, as values in the worker's own host memory)."
  )
  var dataPlane: DataPlane = .tcp

  func validate() throws {
    if cluster != nil && dataPlane != .tcp {
      throw ValidationError(
        "--data-plane \(dataPlane.rawValue) applies to clusters started here; the worker of --cluster reaches its memory nodes as its cluster file says"
      )
    }
  }

  /// What a report says of the data plane: the flag for in-process clusters; a --cluster's
  /// worker reaches its nodes as its own cluster file says.
  var dataPlaneLabel: String { cluster == nil ? dataPlane.rawValue : "the cluster's own" }

  /// Runs `body` with the policies to compare: the in-process ones from the flags, or the
  /// worker of --cluster (connected for the duration of `body`).
  func withPolicies<R: Sendable>(
    model: LlamaModel, tokenizer: BPETokenizer,
    _ body: (_ includeFull: Bool, [CachePolicyComparison.Policy]) async throws -> R
  ) async throws -> R {
    var (includeFull, local) = try resolved()
    let profiles = try await calibratedProfiles(model: model, tokenizer: tokenizer)
    for i in local.indices {
      local[i].profiles = profiles
      local[i].colocatedDataPlane = dataPlane == .colocated
    }
    guard let cluster else { return try await body(includeFull, local) }
    let file = try ClusterConfiguration.load(path: cluster)
    guard let address = file.worker.control else {
      throw CommandFailure(description: "\(cluster) has no worker.control address")
    }
    return try await EngineClient.with(
      address: address, geometry: try model.configuration.geometry,
      security: try file.controlPlaneSecurity(), timeout: .seconds(600)
    ) { client in
      var remote = CachePolicyComparison.Policy(
        name: "cluster:\(file.budgets.policy.rawValue)", engine: client)
      remote.profiles = profiles
      return try await body(true, [remote])
    }
  }

  /// Profiles from --calibration-file, or nil.
  func calibratedProfiles(model: LlamaModel, tokenizer: BPETokenizer) async throws
    -> [HeadProfile]?
  {
    guard let calibrationFile else { return nil }
    guard (64...8192).contains(calibrationTokens) else {
      throw ValidationError("--calibration-tokens in 64...8192")
    }
    let ids = tokenizer.encode(try readTextFile(calibrationFile, flag: "--calibration-file"))
    let steps = 32
    guard ids.count >= calibrationTokens + steps else {
      throw CommandFailure(
        description:
          "--calibration-file \(calibrationFile) has \(ids.count) tokens; \(calibrationTokens + steps) are needed"
      )
    }
    return try await CachePolicyComparison(model: model).calibrateProfiles(
      prompt: Array(ids[..<calibrationTokens]),
      decode: Array(ids[calibrationTokens..<(calibrationTokens + steps)]),
      configuration: BudgetSettings().heteroCache)
  }

  /// Whether the full cache is reported, and the HeteroKV policies to run.
  func resolved() throws -> (includeFull: Bool, [CachePolicyComparison.Policy]) {
    let names = policyNames.split(separator: ",").map(String.init)
    guard !names.isEmpty else { throw ValidationError("--policies: give at least one") }
    guard budget > 0, budget <= 1 else { throw ValidationError("--budget must be in (0, 1]") }
    let (worker, mode) = try settings.resolved()
    var chosen: [CachePolicyComparison.Policy] = []
    for name in names where name != "full" {
      guard let kind = BudgetPolicyKind(rawValue: name) else {
        throw ValidationError(
          "bad policy '\(name)': expected full, heterocache, hcattention or uniform")
      }
      chosen.append(
        CachePolicyComparison.Policy(
          name: name,
          budgets: settings.budgets(policy: kind, memoryFraction: budget),
          worker: worker, outputMode: mode))
    }
    return (names.contains("full"), chosen)
  }
}

/// The worker's knobs every model command shares (`hkv generate`, `hkv needle`,
/// `hkv fidelity`), defaulting to `RecommendedSettings`.
struct CacheSettingsOptions: ParsableArguments {
  @Option(
    help:
      "Share of the approximate attention mass the kept tokens must hold (default: each policy's recommended, 0.985 for hcattention and 0.999 for heterocache)."
  )
  var tau: Double?

  @Option(help: "Most recent tokens every head keeps exactly.")
  var window: Int = RecommendedSettings.worker.window

  @Option(help: "First tokens (attention sinks) every head keeps exactly.")
  var sinks: Int = RecommendedSettings.worker.sinks

  @Option(help: "Key codec on the worker: pq or scalar.")
  var keyCodec: String = RecommendedSettings.worker.keyCodec.rawValue

  @Option(help: "Bits per key code: 8 for pq, 2, 4 or 8 for scalar.")
  var keyBits: Int = RecommendedSettings.worker.keyBits

  @Option(
    help:
      "Head dimensions per pq code (4: 16 one-byte codes per 64-dim key, 6.25% of fp16 K/V).")
  var groupSize: Int = RecommendedSettings.worker.groupSize

  @Flag(help: "hcattention: bound the tokens a step keeps by the head's budget cap.")
  var capSelection = false

  @Flag(
    inversion: .prefixedNo,
    help:
      "hcattention: spend what the budget leaves over the codes on codes twice as fine for the heads whose keys the codes reconstruct worst."
  )
  var finerCodes = RecommendedSettings.worker.finerCodes

  @Flag(
    inversion: .prefixedNo,
    help:
      "pq: train codebooks where distance is score error over the prompt's last queries (query-aware codes)."
  )
  var queryAwareCodes = RecommendedSettings.worker.queryAwareCodes

  @Flag(
    inversion: .prefixedNo,
    help:
      "Exact output: the tokens a step does not keep enter the output as their approximate mass times the head's mean value, instead of their mass going to the kept tokens."
  )
  var unkeptEstimate = RecommendedSettings.worker.unkeptEstimate

  @Option(
    help:
      "What tau selection is made over: query_head (each query head its own kept set, the paper's) or kv_group (one set per KV head from the group's mean probability)."
  )
  var selection: String = RecommendedSettings.worker.selection.rawValue

  @Option(
    help:
      "How memory nodes weight kept tokens: exact (re-scored with full keys) or renormalized.")
  var outputMode: String = RecommendedSettings.worker.outputMode.rawValue

  @Flag(
    inversion: .prefixedNo,
    help:
      "heterocache: compressed heads keep key codes and recall from the memory nodes the tokens their cache lacks (exact output only; --no-recall: static caches, the paper's)."
  )
  var recall = true

  /// The worker settings and output mode the flags name.
  func resolved() throws -> (WorkerSettings, HCAttentionOutputMode) {
    if let tau, !(tau > 0 && tau <= 1) { throw ValidationError("--tau must be in (0, 1]") }
    guard window >= 0, sinks >= 0 else {
      throw ValidationError("--window and --sinks must not be negative")
    }
    guard let codec = KeyCodecKind(rawValue: keyCodec) else {
      throw ValidationError("bad --key-codec '\(keyCodec)': expected pq or scalar")
    }
    guard let mode = HCAttentionOutputMode(rawValue: outputMode), mode != .raw else {
      throw ValidationError("bad --output-mode '\(outputMode)': expected exact or renormalized")
    }
    guard let scope = SelectionScope(rawValue: selection) else {
      throw ValidationError("bad --selection '\(selection)': expected query_head or kv_group")
    }
    var worker = WorkerSettings(
      keyCodec: codec, keyBits: keyBits, groupSize: groupSize, window: window, sinks: sinks,
      tau: tau, capSelection: capSelection)
    worker.finerCodes = finerCodes
    worker.queryAwareCodes = queryAwareCodes
    worker.unkeptEstimate = unkeptEstimate
    worker.selection = scope
    worker.outputMode = mode
    return (worker, mode)
  }

  /// The budgets of `policy` at `memoryFraction` under these settings (recall as flagged, and
  /// only where the output is exact). The in-process clusters charge coded heads what their
  /// index holds at the sequence's length.
  func budgets(policy: BudgetPolicyKind, memoryFraction: Double) -> BudgetSettings {
    var b = RecommendedSettings.budgets(policy: policy, memoryFraction: memoryFraction)
    b.recall = b.recall && recall
    return b.recallingOnly(with: HCAttentionOutputMode(rawValue: outputMode) ?? .exact)
  }
}
