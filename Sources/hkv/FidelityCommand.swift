import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVLocalCluster
import HeteroKVModel
import Logging

/// `hkv fidelity`: next-token fidelity of SmolLM2-135M on HeteroKV policies against the full
/// cache, on real text.
struct FidelityCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "fidelity",
    abstract: "KL divergence and top-1 agreement of each cache policy on real text.",
    discussion: """
      The text files are joined and tokenized; the first --context tokens are the prompt
      (one prefill, exact on every cache) and the next --steps tokens are fed one at a time
      (teacher forcing) to the full cache and to each HeteroKV policy, each on its own cluster
      started in this process. At every step the policy's next-token distribution is compared
      with the full cache's: mean and largest KL divergence (nats) and the share of steps with
      the same top choice. Debian's /usr/share/common-licenses holds long real texts.
      """)

  @Option(name: .customLong("text-file"), help: "A text file; repeat to join several.")
  var textFiles: [String] = []

  @Option(help: "Prompt tokens.")
  var context: Int = 8000

  @Option(help: "Tokens fed after the prompt, each one a compared step.")
  var steps: Int = 64

  @OptionGroup var cache: ComparisonOptions

  @Option(help: "The GGUF model file.")
  var model: String?

  @Option(
    help:
      "Also write the prompt's and the compared steps' attention (the full cache's Q/K/V) to this directory in the trace format, for hkv eval --trace on the same data."
  )
  var writeTrace: String?

  @Flag(help: "Print JSON.")
  var json = false

  struct Report: Codable {
    var context, steps: Int
    var prefillSeconds: Double
    /// How the in-process clusters' workers reached their nodes (tcp or colocated).
    var dataPlane: String
    var runs: [Run]
  }

  struct Run: Codable {
    var policy: String
    var meanKL, maxKL, top1Agreement: Double
    var workerBytes, fullKVBytes: Int
    var workerShare, decodeTokensPerSecond: Double
    /// Mean share of the context tokens a query head's decode step kept.
    var keptShare: Double
    /// Mean bytes a decode step moved between worker and memory nodes.
    var decodeBytesPerStep: Double
    /// The first decode step (for HeteroKV it ends the prefill: profiles, budgets, codebooks).
    var firstStepSeconds: Double
    /// Per layer call of the steady steps, milliseconds: append, attend, and the attend's
    /// local compute, planning, fan-out and merge; overhead is append + attend - compute.
    var perLayerMs: [String: Double]?
  }

  func run() async throws {
    guard !textFiles.isEmpty else { throw ValidationError("give --text-file (repeatable)") }
    guard (16...8192).contains(context) else { throw ValidationError("--context in 16...8192") }
    guard (1...1024).contains(steps) else { throw ValidationError("--steps in 1...1024") }
    var text = ""
    for path in textFiles { text += try readTextFile(path, flag: "--text-file") + "\n" }
    _ = try cache.resolved()  // bad flags fail before the model loads
    let (llama, tokenizer) = try ModelLocation.load(model)
    let ids = tokenizer.encode(text)
    guard ids.count >= context + steps else {
      throw CommandFailure(
        description:
          "the text has \(ids.count) tokens; --context \(context) + --steps \(steps) needs \(context + steps): add --text-file"
      )
    }
    LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
    let progress = ProgressLine()
    progress.show("\(context)-token prefill, then \(steps) steps on each cache")
    let result = try await cache.withPolicies(model: llama, tokenizer: tokenizer) { _, policies in
      try await CachePolicyComparison(model: llama).run(
        prompt: Array(ids[..<context]),
        continuation: .forced(Array(ids[context..<(context + steps)])), policies: policies)
    }
    progress.finish()
    if let writeTrace {
      progress.show("recording the trace of the same \(context) + \(steps) tokens")
      // The full cache over the same prompt and forced tokens: the data every policy decoded.
      try await TraceCommand.record(
        llama, prompt: Array(ids[..<context]), steps: steps,
        forced: Array(ids[context..<(context + steps)]), to: writeTrace)
      progress.finish()
    }
    let report = Report(
      context: context, steps: steps, prefillSeconds: result.prefillSeconds,
      dataPlane: cache.dataPlaneLabel,
      runs: result.runs.map {
        Run(
          policy: $0.policy, meanKL: $0.meanKL, maxKL: $0.maxKL, top1Agreement: $0.top1Agreement,
          workerBytes: $0.workerBytes, fullKVBytes: $0.fullKVBytes,
          workerShare: Double($0.workerBytes) / Double(max(1, $0.fullKVBytes)),
          decodeTokensPerSecond: $0.decodeTokensPerSecond, keptShare: $0.keptShare,
          decodeBytesPerStep: $0.decodeBytesPerStep, firstStepSeconds: $0.firstStepSeconds,
          perLayerMs: Self.perLayer($0.breakdown))
      })
    if json {
      try writeJSON(report)
      return
    }
    print(
      "\(context)-token prompt, \(steps) teacher-forced steps, prefill "
        + String(format: "%.1f s", result.prefillSeconds)
        + ", data plane \(cache.dataPlaneLabel)")
    print(
      TextTable(
        [
          "POLICY", "MEAN KL", "MAX KL", "TOP-1", "WORKER", "SHARE", "KEPT", "MOVED/STEP",
          "DECODE TOK/S", "1ST STEP",
        ],
        rows: report.runs.map {
          [
            $0.policy, String(format: "%.4f", $0.meanKL), String(format: "%.4f", $0.maxKL),
            String(format: "%.3f", $0.top1Agreement), ByteSize.format($0.workerBytes),
            String(format: "%.2f%%", $0.workerShare * 100),
            String(format: "%.1f%%", $0.keptShare * 100),
            ByteSize.format(UInt64($0.decodeBytesPerStep)),
            String(format: "%.2f", $0.decodeTokensPerSecond),
            String(format: "%.2f s", $0.firstStepSeconds),
          ]
        }
      ).render(), terminator: "")
    let phases = report.runs.filter { $0.perLayerMs != nil }
    guard !phases.isEmpty else { return }
    print("\nper layer call of the steady steps, ms (overhead = append + attend - compute):")
    let keys = ["append", "attend", "compute", "plan", "fanOut", "merge", "overhead"]
    print(
      TextTable(
        ["POLICY"] + keys.map { $0.uppercased() },
        rows: phases.map { run in
          [run.policy] + keys.map { String(format: "%.3f", run.perLayerMs![$0] ?? 0) }
        }
      ).render(), terminator: "")
  }

  /// The breakdown per layer call in milliseconds; nil for a cache without one.
  static func perLayer(_ b: DecodeBreakdown) -> [String: Double]? {
    guard b.layerCalls > 0 else { return nil }
    let n = Double(b.layerCalls) / 1000
    return [
      "append": b.append / n, "attend": b.attend / n, "compute": b.phases.compute / n,
      "plan": b.phases.plan / n, "fanOut": b.phases.fanOut / n, "merge": b.phases.merge / n,
      "overhead": b.overheadPerLayer * 1000,
    ]
  }
}
