import ArgumentParser
import Foundation
import HeteroKVCore
import HeteroKVEval
import HeteroKVSettings
import HeteroKVWorker

/// `hkv eval`: every policy against full attention on the same data.
struct EvalCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "eval",
    abstract: "Measure KV-cache policies against full attention on a workload or a trace.",
    discussion: """
      Prints one row per policy and memory budget: output error and cosine similarity against
      full attention, attention-mass recall, worker-resident bytes as a share of fp16 K+V,
      kept share of tokens and bytes moved per decode step. --json prints the same rows as a
      JSON array (docs/eval.md). Progress goes to stderr.
      """)

  @Option(help: "Workload generator (synthetic).")
  var workload: String = "synthetic"

  @Option(help: "Directory of a real trace (docs/trace-format.md); overrides --workload.")
  var trace: String?

  @Option(help: "Geometry preset of the synthetic workload: llama-3-8b, qwen2.5-7b, smollm2-135m.")
  var geometry: String = "llama-3-8b"

  @Option(help: "Layers of the synthetic workload.")
  var layers: Int = 2

  @Option(help: "Prefill tokens of the synthetic workload.")
  var context: Int = 16384

  @Option(help: "Decode steps of the synthetic workload.")
  var steps: Int = 32

  @Option(help: "Seed of the synthetic heads.")
  var seed: UInt64 = 42

  @Option(help: "Memory budgets as shares of fp16 K+V, comma-separated.")
  var budgets: String = "0.25,0.125,0.0625"

  @Option(help: "Policies, comma-separated.")
  var policies: String =
    "hcattention,hcattention-raw,hcattention-exact,heterocache,streamingllm,h2o,tova,snapkv,quest,kivi,full"

  /// The worker's knobs, as `hkv generate`, `hkv needle` and `hkv fidelity` take them: tau,
  /// and with `--codes worker` the index (codec, bits, group size, sinks, window, finer and
  /// query-aware codes), the unkept estimate and HeteroCache's recall. `--output-mode` and
  /// `--cap-selection` do not apply: the harness runs hcattention (renormalized) and
  /// hcattention-exact as separate policies, uncapped.
  @OptionGroup var cache: CacheSettingsOptions

  @Option(
    help:
      "HCAttention's key codes: worker (the worker's index: one-byte pq codes over 4 dims, 4 sink and 64 recent tokens exact, as hkv fidelity and the worker run) or budget (codes sized to fill each budget, the paper's rule, with --centroids)."
  )
  var codes: String = "worker"

  @Option(
    help:
      "PQ centroids per sub-vector codebook with --codes budget; a list runs the centroid ablation."
  )
  var centroids: String = "4096"

  @Option(
    help:
      "What HCAttention's codebooks train on: prefill (each sequence's own, the paper's default) or sample (the workload's calibration sample, shared)."
  )
  var pqCalibration: String = "prefill"

  @Flag(help: "Print the rows as JSON.")
  var json = false

  func run() throws {
    do {
      let source: any AttentionWorkload
      if let trace {
        source = try TraceWorkload(directory: URL(fileURLWithPath: trace))
      } else {
        guard workload == "synthetic" else {
          throw ValidationError("unknown workload '\(workload)'; use synthetic or --trace DIR")
        }
        var config = SyntheticWorkloadConfiguration(
          geometry: try ModelGeometry.preset(named: geometry))
        config.layers = layers
        config.contextLength = context
        config.decodeSteps = steps
        config.modelSeed = seed
        source = try SyntheticWorkload(config)
      }
      var options = try EvalOptions(
        policies: try list(policies, "policies", { $0 }),
        budgets: try list(budgets, "budgets", Double.init))
      let (worker, _) = try cache.resolved()
      options.tau = Float(worker.tau(for: .hcattention))
      options.heteroCacheTau = Float(worker.tau(for: .heterocache))
      options.selection = worker.selection
      options.centroids = try list(centroids, "centroids", Int.init)
      switch codes {
      case "worker":
        options.keyIndex = worker.keyIndex
        options.heteroCacheRecall = cache.recall
        options.estimatesUnkept = worker.unkeptEstimate
        options.finerCodes = worker.finerCodes
        options.heldDecodeRows = WorkerOptions.defaultDecodeShipRows
      case "budget": options.keyIndex = nil
      default: throw ValidationError("--codes must be worker or budget, not '\(codes)'")
      }
      switch pqCalibration {
      case "prefill": options.pqCalibrationSample = false
      case "sample": options.pqCalibrationSample = true
      default:
        throw ValidationError("--pq-calibration must be prefill or sample, not '\(pqCalibration)'")
      }
      let progress = ProgressLine()
      let report = try EvalHarness.run(source, options: options) { progress.show($0) }
      progress.finish()
      print(json ? try report.json() : report.table())
    } catch let error as HeteroKVError {
      throw CommandFailure(description: error.message)
    }
  }

  func list<T>(_ text: String, _ what: String, _ parse: (String) -> T?) throws -> [T] {
    try text.split(separator: ",").map {
      let item = $0.trimmingCharacters(in: .whitespaces)
      guard let value = parse(item) else {
        throw ValidationError("bad value '\(item)' in --\(what)")
      }
      return value
    }
  }
}

/// A failure after the arguments parsed: printed as `Error: <message>`, exit status 1, no
/// usage text (the arguments were not the problem's form, their values or data were).
struct CommandFailure: Error, CustomStringConvertible {
  var description: String
}

/// A single status line on stderr, rewritten in place.
final class ProgressLine: @unchecked Sendable {
  let start = Date()
  let lock = NSLock()
  let isTerminal = isatty(STDERR_FILENO) != 0
  var last = Date.distantPast

  func show(_ message: String) {
    lock.withLock {
      let now = Date()
      guard now.timeIntervalSince(last) > 0.2 else { return }
      last = now
      let line = String(format: "[%6.1fs] %@", now.timeIntervalSince(start), message)
      FileHandle.standardError.write(
        Data(((isTerminal ? "\r\u{1B}[K" : "") + line + (isTerminal ? "" : "\n")).utf8))
    }
  }

  func finish() {
    if isTerminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
  }
}
