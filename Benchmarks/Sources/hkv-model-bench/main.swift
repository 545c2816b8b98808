// hkv-model-bench: SmolLM2-135M prefill and decode speed on the full cache and on HeteroKV,
// with llama.cpp's own speed on the same GGUF and the same tokens in the same run.
//
//   swift run -c release --package-path Benchmarks hkv-model-bench \
//     [--contexts 4096,8000] [--decode 32] [--policies heterocache,hcattention]
//     [--budget 0.125] [--text FILE ...] [--model PATH] [--python PATH]
//
// The prompt is the first N tokens of the text files (default: Debian's GPL-3 and Apache-2.0
// license texts). --python names an interpreter with llama-cpp-python; without it, or when
// llama_cpp does not import, the llama.cpp rows are left out and the report says so.
import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVModel
import HeteroKVWorker
import Logging

struct Arguments {
  var contexts = [4096, 8000]
  var decode = 32
  var policies: [BudgetPolicyKind] = [.heterocache, .hcattention]
  var budget = 0.125
  var texts = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"]
  var model =
    ProcessInfo.processInfo.environment["HKV_SMOLLM2_GGUF"]
    ?? FileManager.default.homeDirectoryForCurrentUser.path
    + "/.cache/heterokv/SmolLM2-135M-Instruct.Q4_1.gguf"
  var python: String?

  init(_ args: [String]) {
    var it = args.makeIterator()
    var texts: [String] = []
    while let a = it.next() {
      switch a {
      case "--contexts": contexts = it.next()!.split(separator: ",").map { Int($0)! }
      case "--decode": decode = Int(it.next()!)!
      case "--policies":
        policies = it.next()!.split(separator: ",").map { BudgetPolicyKind(rawValue: String($0))! }
      case "--budget": budget = Double(it.next()!)!
      case "--text": texts.append(it.next()!)
      case "--model": model = it.next()!
      case "--python": python = it.next()!
      default:
        FileHandle.standardError.write(Data("unknown argument \(a)\n".utf8))
        exit(2)
      }
    }
    if !texts.isEmpty { self.texts = texts }
  }
}

struct Speed {
  var cache: String
  var context: Int
  var prefill: Double
  var decode: Double
  var workerShare: Double?
}

/// Prefill tokens/s and decode tokens/s of `cache` (greedy decode; `afterPrefill` runs before
/// the decode clock starts, and the first decode step, which seals a HeteroKV sequence, is
/// timed apart).
func measure<Cache: ModelKVCache>(
  _ model: LlamaModel, _ prompt: [Int], decode: Int, cache: inout Cache
) async throws -> (prefill: Double, firstStep: Double, decode: Double) {
  let clock = ContinuousClock()
  var start = clock.now
  var logits = try await model.prefill(prompt, cache: &cache)
  let prefill = (clock.now - start).inSeconds
  start = clock.now
  logits = try await model.forward(
    [NextTokenDistance.argmax(logits)], start: prompt.count, cache: &cache)
  let first = (clock.now - start).inSeconds
  start = clock.now
  for step in 1..<decode {
    logits = try await model.forward(
      [NextTokenDistance.argmax(logits)], start: prompt.count + step, cache: &cache)
  }
  return (
    Double(prompt.count) / prefill, first, Double(decode - 1) / (clock.now - start).inSeconds
  )
}

let args = Arguments(Array(CommandLine.arguments.dropFirst()))
LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
let file = try GGUFFile(path: args.model)
let model = try LlamaModel(file: file)
let tokenizer = try BPETokenizer(gguf: file)
var text = ""
for path in args.texts { text += try String(contentsOfFile: path, encoding: .utf8) + "\n" }
let ids = tokenizer.encode(text)
guard let longest = args.contexts.max(), ids.count >= longest + args.decode else {
  fatalError("the texts have \(ids.count) tokens; give more --text files")
}
let c = model.configuration
/// The tau `hkv needle` and `hkv fidelity` default to.
let tau = 0.999
var rows: [Speed] = []
for n in args.contexts {
  let prompt = Array(ids[..<n])
  var full = FullKVCache(configuration: c)
  let f = try await measure(model, prompt, decode: args.decode, cache: &full)
  rows.append(Speed(cache: "full", context: n, prefill: f.prefill, decode: f.decode))
  print("full n=\(n): prefill \(f.prefill) tok/s, decode \(f.decode) tok/s", to: &standardError)
  for policy in args.policies {
    var options = LocalCluster.Options(
      model: try c.geometry, sequenceTokens: n + args.decode + 1)
    options.budgets = BudgetSettings(policy: policy, memoryFraction: args.budget, minTokens: 16)
    options.worker = WorkerSettings(tau: tau)
    options.outputMode = .exact
    let cluster = try await LocalCluster.start(options, logger: Logger(label: "bench"))
    let ref = SequenceRef(sequence: 1)
    _ = try await cluster.worker.createSequence(ref, maxTokens: n + args.decode + 1)
    var cache = EngineKVCache(engine: cluster.worker, ref: ref, configuration: c)
    let m = try await measure(model, prompt, decode: args.decode, cache: &cache)
    let stats = try await cluster.worker.stats(ref)
    await cluster.shutdown()
    let share = Double(stats.workerBytes) / Double(stats.fullKVBytes)
    rows.append(
      Speed(
        cache: policy.rawValue, context: n, prefill: m.prefill, decode: m.decode,
        workerShare: share))
    print(
      "\(policy.rawValue) n=\(n): prefill \(m.prefill) tok/s, seal+first step \(m.firstStep) s, decode \(m.decode) tok/s",
      to: &standardError)
  }
}

// llama.cpp on the same tokens, in the same run.
var llamaNote = "llama.cpp: not run (give --python with llama-cpp-python installed)"
if let python = args.python {
  let spec = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-llama-spec.json")
  let runs: [[String: Any]] = args.contexts.map {
    ["prompt": Array(ids[..<$0]), "decode": Array(ids[$0..<($0 + args.decode)])]
  }
  try JSONSerialization.data(
    withJSONObject: [
      "model": args.model, "threads": ProcessInfo.processInfo.activeProcessorCount, "runs": runs,
    ]
  ).write(to: spec)
  let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../Scripts/llama_cpp_speed.py").standardized.path
  let process = Process()
  process.executableURL = URL(fileURLWithPath: python)
  process.arguments = [script, spec.path]
  let pipe = Pipe()
  process.standardOutput = pipe
  try process.run()
  let output = pipe.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  if process.terminationStatus == 0 {
    for line in String(decoding: output, as: UTF8.self).split(separator: "\n") {
      let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
      rows.append(
        Speed(
          cache: "llama.cpp", context: o["context"] as! Int, prefill: o["prefill_tps"] as! Double,
          decode: o["decode_tps"] as! Double))
    }
    llamaNote =
      "llama.cpp: llama-cpp-python via \(python), \(ProcessInfo.processInfo.activeProcessorCount) threads, Q4_1 weights"
  } else {
    llamaNote = "llama.cpp: \(python) \(script) failed with status \(process.terminationStatus)"
  }
}

print(
  "SmolLM2-135M, \(ProcessInfo.processInfo.activeProcessorCount) cores; decode \(args.decode) greedy steps; HeteroKV at budget \(args.budget), one-byte pq codes per \(WorkerSettings().groupSize) dims, tau \(tau), exact outputs"
)
print("cache        context  prefill tok/s  decode tok/s  vs full (prefill, decode)  worker share")
for row in rows {
  let full = rows.first { $0.cache == "full" && $0.context == row.context }!
  print(
    row.cache.padding(toLength: 12, withPad: " ", startingAt: 0) + " "
      + String(
        format: "%7d  %13.1f  %12.2f  %8.2fx %8.2fx  %@", row.context, row.prefill, row.decode,
        row.prefill / full.prefill, row.decode / full.decode,
        row.workerShare.map { String(format: "%.2f%%", $0 * 100) } ?? "100%"))
}
print(llamaNote)

struct StandardError: TextOutputStream {
  mutating func write(_ string: String) { FileHandle.standardError.write(Data(string.utf8)) }
}
nonisolated(unsafe) var standardError = StandardError()
