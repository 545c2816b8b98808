import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVEval
import HeteroKVLocalCluster
import HeteroKVMemoryClient
import HeteroKVWire
import HeteroKVWorker
import Logging

/// `hkv demo`: a long-context decode workload end to end on a cluster, measured against full
/// attention. The first thing to run.
struct DemoCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "demo",
    abstract: "Run a long-context decode workload end to end and report what it cost.",
    discussion: """
      Without --config, starts a cluster on loopback (a coordinator, --memnodes memory nodes
      and a worker: in this process, or as child processes with --processes), creates one
      sequence of --tokens tokens of the synthetic workload with Llama-3-8B geometry (the first
      --layers layers), prefills it through the engine API, runs --steps decode steps, and
      reports: bytes on the worker and on each memory node against fp16 K/V, output error
      against full attention, attention-mass recall, decode steps per second, bytes moved per
      step, and the budget table of the first layers. With --config, runs the same against
      daemons already started from that file (its model, worker and budget settings).
      Beside the run's own figures it prints, on the same workload, StreamingLLM (sinks and
      a recent window) at the same worker memory and full attention (--no-baselines skips
      them). Progress goes to stderr; the report to stdout (--json for scripts).
      """)

  @Option(help: "Prefill tokens.")
  var tokens: Int = 200_000

  @Option(help: "Layers of Llama-3-8B geometry (without --config).")
  var layers: Int = 2

  @Option(help: "Memory nodes to start (without --config).")
  var memnodes: Int = 2

  @Option(help: "Memory budget: the share of fp16 K/V the worker may hold (without --config).")
  var budget: Double = 0.125

  @Option(help: "Budget policy: heterocache, hcattention or uniform (without --config).")
  var policy: String = DemoDefaults.policy

  @Option(help: "Share of the approximate attention mass each step keeps (without --config).")
  var tau: Double = DemoDefaults.tau

  @Option(
    help:
      "How kept tokens become the output: exact (memory nodes re-score them with fp16 keys) or renormalized (approximate weights); without --config."
  )
  var outputMode: String = DemoDefaults.outputMode

  @Flag(
    inversion: .prefixedNo,
    help: "Also run StreamingLLM at the same worker memory and full attention on the workload.")
  var baselines = true

  @Option(help: "Key codec on the worker: pq or scalar (without --config).")
  var keyCodec: String = "pq"

  @Option(
    help: "Bits per key code: 8 for pq (256 centroids per group of 4 dims), 2, 4 or 8 for scalar.")
  var keyBits: Int = 8

  @Option(help: "Copies of each shard on the memory tier (without --config).")
  var replication: Int = 1

  @Option(help: "Decode steps.")
  var steps: Int = 16

  @Option(help: "Workload seed.")
  var seed: UInt64 = 1

  @Flag(
    inversion: .prefixedNo,
    help:
      "Profile heads on a separate calibration sample first (HeteroCache's offline way); without it the worker profiles them from the prefill's last queries."
  )
  var calibrate = true

  @Flag(help: "Run the roles as child processes instead of in this process.")
  var processes = false

  @Option(help: "Run against the daemons of this cluster file (already started).")
  var config: String?

  @Flag(help: "Print the report as JSON.")
  var json = false

  func validate() throws {
    guard (1...4_000_000).contains(tokens) else {
      throw ValidationError("--tokens must be in 1...4000000")
    }
    guard (1...32).contains(layers) else { throw ValidationError("--layers must be in 1...32") }
    guard (1...16).contains(memnodes) else { throw ValidationError("--memnodes must be in 1...16") }
    guard budget > 0, budget <= 1 else { throw ValidationError("--budget must be in (0, 1]") }
    guard BudgetPolicyKind(rawValue: policy) != nil else {
      throw ValidationError(
        "bad --policy '\(policy)': expected heterocache, hcattention or uniform")
    }
    guard let codec = KeyCodecKind(rawValue: keyCodec) else {
      throw ValidationError("bad --key-codec '\(keyCodec)': expected pq or scalar")
    }
    guard codec == .pq ? [4, 8, 12, 16].contains(keyBits) : [2, 4, 8].contains(keyBits) else {
      throw ValidationError("--key-bits \(keyBits) does not fit --key-codec \(keyCodec)")
    }
    guard (1...1024).contains(steps) else { throw ValidationError("--steps must be in 1...1024") }
    guard tau >= 0.5, tau <= 1 else { throw ValidationError("--tau must be in [0.5, 1]") }
    guard HCAttentionOutputModeArgument(rawValue: outputMode) != nil else {
      throw ValidationError("bad --output-mode '\(outputMode)': expected exact or renormalized")
    }
    guard (1...memnodes).contains(replication) else {
      throw ValidationError("--replication must be in 1...--memnodes")
    }
    guard !(processes && config != nil) else {
      throw ValidationError("--processes starts its own cluster; it cannot be used with --config")
    }
  }

  func run() async throws {
    LoggingSystem.bootstrap { label in
      var handler = StreamLogHandler.standardError(label: label)
      handler.logLevel = .error
      return handler
    }
    let logger = Logger(label: "hkv.demo")
    let progress = ProgressLine()
    let cluster = try config.map { path in
      do {
        return try ClusterConfiguration.load(path: path)
      } catch {
        throw CommandFailure(description: "\(error)")
      }
    }
    let model = try cluster?.model ?? ModelGeometry.llama3_8B.withLayers(layers)
    var workload = SyntheticWorkloadConfiguration(geometry: model)
    workload.layers = model.layers
    workload.contextLength = tokens
    workload.decodeSteps = steps
    workload.observationWindow = 32
    workload.sampleSeed = seed
    let replay = try WorkloadReplay(SyntheticWorkload(workload)) { done, total in
      progress.show("generating the workload: layer \(done)/\(total)")
    }
    var profiles: [HeadProfile]?
    if calibrate {
      // A shorter sample of the same heads (another token seed), profiled with full attention.
      var sample = workload
      sample.contextLength = min(tokens, 8192)
      sample.observationWindow = min(32, sample.contextLength)
      sample.sampleSeed = seed &+ 1_000_003
      progress.show("calibrating head profiles on a \(sample.contextLength)-token sample")
      profiles = try HeteroCacheCalibration.profile(
        SyntheticWorkload(sample), configuration: (cluster?.budgets ?? BudgetSettings()).heteroCache
      )
    }
    let ref = SequenceRef(namespace: 0, sequence: UInt64.random(in: 1...(1 << 40)))
    var report: DemoReport
    if let cluster {
      report = try await runAgainst(
        cluster, replay: replay, ref: ref, mode: "config", profiles: profiles, progress: progress)
    } else if processes {
      let children = try ChildCluster.start(
        model: model, memoryNodes: memnodes, capacityBytes: capacityPerNode(model),
        replication: replication, policy: policy, budget: budget, keyCodec: keyCodec,
        keyBits: keyBits, tau: tau, outputMode: outputMode)
      do {
        report = try await runAgainst(
          children.configuration, replay: replay, ref: ref, mode: "processes", profiles: profiles,
          progress: progress)
        children.stop()
      } catch {
        children.stop()
        throw error
      }
    } else {
      var options = LocalCluster.Options(model: model)
      options.memoryNodes = memnodes
      options.capacityBytes = capacityPerNode(model)
      options.replication = replication
      options.budgets = BudgetSettings(
        policy: BudgetPolicyKind(rawValue: policy)!, memoryFraction: budget)
      options.worker.keyCodec = KeyCodecKind(rawValue: keyCodec)!
      options.worker.keyBits = keyBits
      options.worker.tau = tau
      options.outputMode = HCAttentionOutputModeArgument(rawValue: outputMode)!.mode
      let local = try await LocalCluster.start(options, logger: logger)
      do {
        report = try await runAgainst(
          local.configuration, replay: replay, ref: ref, mode: "in-process",
          profiles: profiles, engine: local.worker, progress: progress)
        await local.shutdown()
      } catch {
        await local.shutdown()
        throw error
      }
    }
    if baselines {
      report.comparison += try Self.baselineRows(
        replay, workerFraction: report.workerFraction, progress: progress)
    }
    progress.finish()
    if json {
      try writeJSON(report)
    } else {
      print(report.text, terminator: "")
    }
    // The figures are printed whatever happened at release; a real failure follows them.
    if let failure = report.releaseFailure {
      throw CommandFailure(description: "releasing the sequence: \(failure)")
    }
  }

  /// StreamingLLM at the run's worker share and full attention, on the same workload, in
  /// this process (the harness of `hkv eval`): what the budget buys, and what it costs.
  static func baselineRows(
    _ replay: WorkloadReplay, workerFraction: Double, progress: ProgressLine
  ) throws -> [DemoReport.Comparison] {
    let budget = min(1, max(1e-4, workerFraction))
    let options = try EvalOptions(policies: ["streamingllm", "full"], budgets: [budget])
    let eval = try EvalHarness.run(replay.workload, options: options) {
      progress.show("baselines: \($0)")
    }
    return eval.rows.filter { $0.status == "ok" }.map { row in
      let steps = Double(replay.decodeSteps)
      return DemoReport.Comparison(
        name: row.policy == "full" ? "full attention" : "\(row.policy) (same worker memory)",
        workerFraction: row.residentFraction ?? (row.policy == "full" ? 1 : budget),
        meanRelativeError: row.relativeL2Error ?? 0, massRecall: row.massRecall ?? 1,
        keptShare: row.keptFraction ?? 1, bytesMovedPerStep: Int(row.bytesMovedPerStep ?? 0),
        decodeStepsPerSecond: row.seconds.map { $0 > 0 ? steps / $0 : 0 })
    }
  }

  /// Room for every row of the sequence, with its copies, spread over the nodes, plus slack.
  func capacityPerNode(_ model: ModelGeometry) -> Int {
    let rows = (tokens + steps) * model.layers * model.kvHeads * model.headDim * 4 * replication
    return max(256 << 20, rows / memnodes * 3 / 2 + (64 << 20))
  }

  /// Creates the sequence, prefills it, decodes, gathers the figures and releases it. The
  /// engine is the in-process worker when given, else the file's worker over gRPC.
  func runAgainst(
    _ cluster: ClusterConfiguration, replay: WorkloadReplay, ref: SequenceRef, mode: String,
    profiles: [HeadProfile]?, engine: Worker? = nil, progress: ProgressLine
  ) async throws -> DemoReport {
    guard let coordinator = cluster.coordinator?.control else {
      throw CommandFailure(description: "the cluster file has no coordinator section")
    }
    let security = try cluster.controlPlaneSecurity()
    let clock = ContinuousClock()
    func run(_ engine: any KVCacheEngine, stats: () async throws -> SequenceFigures)
      async throws -> (Double, WorkloadReplay.DecodeReport, SequenceFigures)
    {
      let started = clock.now
      try await replay.prefill(engine, ref) { done, total in
        progress.show("prefill  \(ProgressLine.bar(done, total)) \(done)/\(total) rows")
      }
      let prefill = (clock.now - started).inSeconds
      let decode = try await replay.decode(engine, ref) { done, total in
        progress.show("decode   \(ProgressLine.bar(done, total)) step \(done)/\(total)")
      }
      return (prefill, decode, try await stats())
    }
    let outcome: (Double, WorkloadReplay.DecodeReport, SequenceFigures)
    let maxTokens = replay.contextLength + replay.decodeSteps
    do {
      if let engine {
        _ = try await engine.createSequence(ref, maxTokens: maxTokens, profiles: profiles)
        outcome = try await run(engine) { SequenceFigures(try await engine.stats(ref).proto) }
      } else {
        guard let address = cluster.worker.control else {
          throw CommandFailure(description: "the cluster file has no worker.control address")
        }
        outcome = try await EngineClient.with(
          address: address, geometry: replay.geometry, security: security, timeout: .seconds(600)
        ) { client in
          _ = try await client.createSequence(ref, maxTokens: maxTokens, profiles: profiles)
          return try await run(client) { SequenceFigures(try await client.stats(ref)) }
        }
      }
    } catch let error as WorkerError {
      throw CommandFailure(description: error.description)
    }
    let (prefillSeconds, decode, figures) = outcome
    // What each memory node holds, and the budgets the coordinator assigned.
    let (members, budgets) = try await CoordinatorClient.with(
      address: coordinator, security: security
    ) { client in
      (
        try await client.nodes(),
        try await client.budgets(namespace: ref.namespace, sequence: ref.sequence, layer: nil)
      )
    }
    // Asked of each node over its data plane: heartbeats report use only every few seconds.
    var nodeBytes: [String: UInt64] = [:]
    for member in members.members where member.role == .memoryNode {
      guard let data = HostPort(member.dataAddress) else { continue }
      let client = MemoryNodeClient(
        endpoint: MemoryNodeEndpoint(
          id: member.memberID, data: data,
          transport: DataPlaneTransportKind(rawValue: member.transport) ?? .tcp),
        connections: 1)
      do {
        nodeBytes[member.memberID] = try await client.stats().usedBytes
      } catch {
        nodeBytes[member.memberID] = member.usedBytes
      }
      await client.close()
    }
    let resident = Dictionary(
      figures.heads.map { ("\($0.layer)/\($0.kvHead)", $0.residentBytes) }, uniquingKeysWith: +)
    let table = (budgets.sequences.first?.heads ?? []).filter { $0.layer < 2 }.map {
      DemoReport.HeadBudget(
        layer: Int($0.layer), kvHead: Int($0.kvHead),
        role: $0.role == "satellite" ? "satellite(\($0.pivot))" : $0.role, cap: Int($0.cap),
        stability: $0.stability, residentBytes: resident["\($0.layer)/\($0.kvHead)"] ?? 0)
    }
    // The memory nodes' used bytes are read before the sequence is released.
    // A node that died mid-run does not fail the release (its rows went with it); what does
    // fail it is reported after the figures.
    var releaseFailure: String?
    do {
      if let engine {
        try await engine.release(ref)
      } else if let address = cluster.worker.control {
        try await EngineClient.with(address: address, geometry: replay.geometry, security: security)
        {
          try await $0.release(ref)
        }
      }
    } catch {
      releaseFailure = "\(error)"
    }
    let keptShare =
      figures.contextTokens > 0 ? Double(figures.keptTokens) / Double(figures.contextTokens) : 0
    let workerFraction = Double(figures.workerBytes) / Double(max(1, figures.fullKVBytes))
    let stepsPerSecond = Double(decode.steps) / max(decode.engineSeconds, 1e-9)
    return DemoReport(
      mode: mode, model: replay.geometry.name, layers: replay.geometry.layers,
      kvHeads: replay.geometry.kvHeads, headDim: replay.geometry.headDim,
      tokens: replay.contextLength, decodeSteps: decode.steps, policy: figures.policy,
      budgetFraction: cluster.budgets.memoryFraction, memoryNodes: nodeBytes.count,
      workerBytes: figures.workerBytes, memoryTierBytes: figures.memoryTierBytes,
      memoryNodeBytes: nodeBytes, fullKvBytes: figures.fullKVBytes,
      workerFraction: workerFraction,
      tokenRows: figures.tokens * replay.geometry.layers * replay.geometry.kvHeads,
      storedRows: figures.storedRows, unshippedRows: figures.unshippedRows,
      meanRelativeError: decode.meanRelativeError, maxRelativeError: decode.maxRelativeError,
      massRecall: decode.meanMassRecall, prefillSeconds: prefillSeconds,
      decodeStepsPerSecond: stepsPerSecond,
      bytesMovedPerStep: decode.bytesMoved / max(1, decode.steps), keptShare: keptShare,
      failovers: figures.failovers, refreshes: figures.refreshes, budgets: table,
      comparison: [
        .init(
          name: "\(figures.policy) (this run)", workerFraction: workerFraction,
          meanRelativeError: decode.meanRelativeError, massRecall: decode.meanMassRecall,
          keptShare: keptShare, bytesMovedPerStep: decode.bytesMoved / max(1, decode.steps),
          decodeStepsPerSecond: stepsPerSecond)
      ], releaseFailure: releaseFailure)
  }
}

/// The sequence figures the demo reports, from the worker's stats.
struct SequenceFigures {
  var policy: String
  var tokens, workerBytes, memoryTierBytes, fullKVBytes, storedRows, unshippedRows, refreshes: Int
  var keptTokens, contextTokens, failovers: Int
  var heads: [(layer: Int, kvHead: Int, residentBytes: Int)]

  init(_ s: Heterokv_V1_SequenceStats) {
    policy = s.policy
    tokens = Int(s.tokens)
    workerBytes = Int(s.workerBytes)
    memoryTierBytes = Int(s.memoryTierBytes)
    fullKVBytes = Int(s.fullKvBytes)
    storedRows = Int(s.storedRows)
    unshippedRows = Int(s.unshippedRows)
    refreshes = Int(s.refreshes)
    keptTokens = Int(s.keptTokens)
    contextTokens = Int(s.contextTokens)
    failovers = Int(s.failovers)
    heads = s.heads.map { (Int($0.layer), Int($0.kvHead), Int($0.residentBytes)) }
  }
}

/// What `hkv demo` reports.
struct DemoReport: Codable {
  struct HeadBudget: Codable {
    var layer, kvHead: Int
    var role: String
    var cap: Int
    var stability: Double
    var residentBytes: Int
  }
  /// One way of attending the workload, for the comparison table.
  struct Comparison: Codable {
    var name: String
    var workerFraction, meanRelativeError, massRecall, keptShare: Double
    var bytesMovedPerStep: Int
    /// Decode steps per second where measured (the baselines run in this process, on the
    /// harness: not a cluster's speed).
    var decodeStepsPerSecond: Double?
  }
  var mode, model: String
  var layers, kvHeads, headDim, tokens, decodeSteps: Int
  var policy: String
  var budgetFraction: Double
  var memoryNodes: Int
  var workerBytes, memoryTierBytes: Int
  var memoryNodeBytes: [String: UInt64]
  var fullKvBytes: Int
  var workerFraction: Double
  /// tokens x layers x KV heads; every row is stored on a memory node or still on the worker.
  var tokenRows, storedRows, unshippedRows: Int
  var meanRelativeError, maxRelativeError, massRecall: Double
  var prefillSeconds, decodeStepsPerSecond: Double
  var bytesMovedPerStep: Int
  /// Mean share of the context a query head's decode step attended.
  var keptShare: Double
  var failovers: Int
  var refreshes: Int
  var budgets: [HeadBudget]
  /// This run, then StreamingLLM at the same worker memory and full attention.
  var comparison: [Comparison]
  /// Why releasing the sequence failed, if it did (the report is printed first).
  var releaseFailure: String?

  var text: String {
    func size(_ b: Int) -> String { ByteSize.format(UInt64(b)) }
    var out = """
      HeteroKV demo (\(mode)): \(model), \(layers) layers x \(kvHeads) KV heads x \(headDim), \
      \(tokens) tokens + \(decodeSteps) decode steps, policy \(policy) at \(budgetFraction)

      where the KV cache lives
        worker            \(size(workerBytes))  (\(String(format: "%.1f%%", workerFraction * 100)) of fp16 K/V)

      """
    for (id, bytes) in memoryNodeBytes.sorted(by: { $0.key < $1.key }) {
      out += "  \(id.padding(toLength: 16, withPad: " ", startingAt: 0))  \(size(Int(bytes)))\n"
    }
    out += """
        full fp16 K/V     \(size(fullKvBytes))
        rows              \(storedRows) on memory nodes + \(unshippedRows) on the worker = \(tokenRows)

      fidelity against full attention
        output error      mean \(String(format: "%.4f", meanRelativeError)), max \(String(format: "%.4f", maxRelativeError)) (relative L2)
        mass recall       \(String(format: "%.4f", massRecall))
        kept per step     \(String(format: "%.2f%%", keptShare * 100)) of the context per query head

      speed
        prefill           \(String(format: "%.1f", prefillSeconds)) s
        decode            \(String(format: "%.2f", decodeStepsPerSecond)) steps/s (\(layers) layers per step)
        moved per step    \(size(bytesMovedPerStep))
        satellite refreshes \(refreshes), failovers \(failovers)

      budgets (first layers)

      """
    out += TextTable(
      ["LAYER", "HEAD", "ROLE", "STABILITY", "CAP", "WORKER BYTES"],
      rows: budgets.map {
        [
          "\($0.layer)", "\($0.kvHead)", $0.role, String(format: "%.2f", $0.stability),
          "\($0.cap)", size($0.residentBytes),
        ]
      }
    ).render()
    if comparison.count > 1 {
      out += """

        what the budget buys (same workload; output error is the relative L2 distance of each
        attention output from full attention's, mass recall the share of full attention's
        weight on the tokens a step attended)

        """
      out += TextTable(
        ["", "WORKER", "OUTPUT ERROR", "MASS RECALL", "KEPT", "MOVED/STEP"],
        rows: comparison.map {
          [
            $0.name, String(format: "%.1f%%", $0.workerFraction * 100),
            String(format: "%.4f", $0.meanRelativeError), String(format: "%.4f", $0.massRecall),
            String(format: "%.2f%%", $0.keptShare * 100), size($0.bytesMovedPerStep),
          ]
        }
      ).render()
    }
    return out
  }
}

/// The configuration the demo runs by default: the one this project recommends at a 12.5%
/// budget (docs/benchmarks.md, "hkv demo": the best output error on this workload).
enum DemoDefaults {
  static let policy = "hcattention"
  static let tau = 0.9
  static let outputMode = "exact"
}

extension ProgressLine {
  /// A 24-cell bar for `done` of `total`.
  static func bar(_ done: Int, _ total: Int) -> String {
    let filled = total > 0 ? min(24, done * 24 / total) : 0
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: 24 - filled)
      + "]"
  }
}
