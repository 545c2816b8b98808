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

  @Option(
    help:
      "Share of the approximate attention mass each step keeps (without --config; default: the policy's recommended, 0.985 for hcattention, 0.999 for heterocache)."
  )
  var tau: Double?

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

  @Option(help: "The sequence's id (random by default): fixes where its shards are placed.")
  var sequence: UInt64?

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
    if let tau, !(tau >= 0.5 && tau <= 1) { throw ValidationError("--tau must be in [0.5, 1]") }
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
    let show: @Sendable (String) -> Void = { progress.show($0) }
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
    let ref = SequenceRef(namespace: 0, sequence: sequence ?? UInt64.random(in: 1...(1 << 40)))
    var report: DemoReport
    let capacity = ClusterDemo.capacityPerNode(
      model: model, tokens: tokens, steps: steps, replication: replication, memoryNodes: memnodes)
    if let cluster {
      report = try await ClusterDemo.run(
        cluster, security: try cluster.controlPlaneSecurity(), replay: replay, ref: ref,
        mode: "config", profiles: profiles, progress: show)
    } else if processes {
      let children = try ChildCluster.start(
        model: model, memoryNodes: memnodes, capacityBytes: capacity,
        replication: replication, policy: policy, budget: budget, keyCodec: keyCodec,
        keyBits: keyBits, tau: tau, outputMode: outputMode)
      do {
        report = try await ClusterDemo.run(
          children.configuration, security: .none, replay: replay, ref: ref, mode: "processes",
          profiles: profiles,
          progress: show)
        children.stop()
      } catch {
        children.stop()
        throw error
      }
    } else {
      var options = LocalCluster.Options(model: model)
      options.memoryNodes = memnodes
      options.capacityBytes = capacity
      options.replication = replication
      options.budgets = BudgetSettings(
        policy: BudgetPolicyKind(rawValue: policy)!, memoryFraction: budget)
      options.worker.keyCodec = KeyCodecKind(rawValue: keyCodec)!
      options.worker.keyBits = keyBits
      options.worker.tau = tau
      options.outputMode = HCAttentionOutputModeArgument(rawValue: outputMode)!.mode
      let local = try await LocalCluster.start(options, logger: logger)
      do {
        report = try await ClusterDemo.run(
          local.configuration, security: .none, replay: replay, ref: ref, mode: "in-process",
          profiles: profiles, engine: local.worker, progress: show)
        await local.shutdown()
      } catch {
        await local.shutdown()
        throw error
      }
    }
    if baselines {
      report.comparison += try ClusterDemo.baselines(
        replay, workerFraction: report.workerFraction, progress: show)
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

}

extension DemoReport {
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
  static let outputMode = "exact"
}
