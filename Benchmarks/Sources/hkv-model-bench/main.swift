// hkv-model-bench: SmolLM2-135M decode speed on the full cache and on HeteroKV, with
// llama.cpp's own speed on the same GGUF and the same tokens in the same run.
//
//   swift run -c release --package-path Benchmarks hkv-model-bench \
//     [--contexts 4096,8000] [--decode 32] [--policies heterocache,hcattention,hcattention:pq4]
//     [--budget 0.125] [--text FILE ...] [--model PATH] [--python PATH] [--prefill-each]
//
// The prompt is the first N tokens of the text files (default: Debian's GPL-3 and Apache-2.0
// license texts; give more for contexts past about 8K); the decode steps are fed the text's
// next tokens (teacher-forced), so every cache computes the same steps. By default one prefill
// on the full cache feeds every HeteroKV sequence (the prompt's attention is exact on all of
// them, so their K/V are identical; a 32K prefill takes minutes here), and each cache's steady
// decode rate is measured after its first step (which seals a HeteroKV sequence).
// `--prefill-each` instead prefills every cache on its own and reports each prefill's rate.
// HeteroKV runs the recommended settings (`RecommendedSettings`); a policy named with `:pq4`
// uses 4-bit codes over 2 dims (fast-scan scoring) instead of one-byte codes over 4, and one
// named with `@colocated` reaches its memory nodes without sockets (values in the worker's own
// host memory) instead of over loopback TCP (nodes on other hosts). Past
// SmolLM2's 8K training length the tokens it would write mean little, but the work per step,
// and so the speed, is real. --python names an interpreter with llama-cpp-python; without it,
// or when llama_cpp does not import, the llama.cpp rows are left out and the report says so.
import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVModel
import HeteroKVWorker
import Logging

/// One HeteroKV configuration of the run: a policy and its key codes.
struct BenchPolicy {
  var kind: BudgetPolicyKind
  var fourBit: Bool
  /// The worker reaches its nodes without sockets (`@colocated`), not over loopback TCP.
  var colocated: Bool
  var name: String { kind.rawValue + (fourBit ? ":pq4" : "") + (colocated ? "@colocated" : "") }

  init?(_ text: Substring) {
    let placed = text.split(separator: "@", omittingEmptySubsequences: false)
    guard placed.count <= 2, placed.count == 1 || placed[1] == "colocated" else { return nil }
    let parts = placed[0].split(separator: ":")
    guard let first = parts.first, let kind = BudgetPolicyKind(rawValue: String(first)),
      parts.count <= 2, parts.count == 1 || parts[1] == "pq4"
    else { return nil }
    self.kind = kind
    fourBit = parts.count == 2
    colocated = placed.count == 2
  }

  /// The recommended worker settings, with 4-bit codes over 2 dims where named.
  var worker: WorkerSettings {
    var w = RecommendedSettings.worker
    if fourBit {
      w.keyBits = 4
      w.groupSize = 2
    }
    return w
  }

  func budgets(_ fraction: Double) -> BudgetSettings {
    RecommendedSettings.budgets(policy: kind, memoryFraction: fraction).recallingOnly(with: .exact)
  }
}

struct Arguments {
  var contexts = [4096, 8000]
  var decode = 32
  var policies = [BenchPolicy("heterocache")!, BenchPolicy("hcattention")!]
  var budget = 0.125
  var texts = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"]
  var model =
    ProcessInfo.processInfo.environment["HKV_SMOLLM2_GGUF"]
    ?? FileManager.default.homeDirectoryForCurrentUser.path
    + "/.cache/heterokv/SmolLM2-135M-Instruct.Q4_1.gguf"
  var python: String?
  var prefillEach = false

  init(_ args: [String]) {
    var it = args.makeIterator()
    var texts: [String] = []
    func fail(_ message: String) -> Never {
      FileHandle.standardError.write(Data("hkv-model-bench: \(message)\n".utf8))
      exit(2)
    }
    func value(_ flag: String) -> String {
      guard let v = it.next() else { fail("\(flag) needs a value") }
      return v
    }
    while let a = it.next() {
      switch a {
      case "--contexts":
        let v = value(a)
        contexts = v.split(separator: ",").compactMap { Int($0) }.filter { $0 > 0 }
        if contexts.isEmpty { fail("bad --contexts '\(v)': expected token counts like 4096,8000") }
      case "--decode":
        guard let n = Int(value(a)), n >= 3 else { fail("--decode must be at least 3 steps") }
        decode = n
      case "--policies":
        let v = value(a)
        let parsed = v.split(separator: ",").map { BenchPolicy($0) }
        guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else {
          fail(
            "bad --policies '\(v)': expected heterocache, hcattention or uniform, each with an optional :pq4 and an optional @colocated"
          )
        }
        policies = parsed.map { $0! }
      case "--budget":
        guard let b = Double(value(a)), b > 0, b <= 1 else { fail("--budget must be in (0, 1]") }
        budget = b
      case "--text": texts.append(value(a))
      case "--model": model = value(a)
      case "--python": python = value(a)
      case "--prefill-each": prefillEach = true
      default: fail("unknown argument \(a)")
      }
    }
    if !texts.isEmpty { self.texts = texts }
  }
}

struct Speed {
  var cache: String
  var context: Int
  /// Prefill tokens/s; nil for a cache fed by the full cache's prefill.
  var prefill: Double?
  var decode: Double
  var workerShare: Double?
  var keptShare: Double?
  var movedPerStep: Double?
  var meanKL: Double?
  var top1: Double?
  /// The steady steps' cache time per layer call (HeteroKV, one-prefill runs only).
  var breakdown: DecodeBreakdown?
}

/// Prefill tokens/s and decode tokens/s of `cache` (decode fed `continuation`; the first
/// decode step, which seals a HeteroKV sequence, is timed apart).
func measure<Cache: ModelKVCache>(
  _ model: LlamaModel, _ prompt: [Int], continuation: [Int], cache: inout Cache
) async throws -> (prefill: Double, firstStep: Double, decode: Double) {
  let clock = ContinuousClock()
  var start = clock.now
  _ = try await model.prefill(prompt, cache: &cache)
  let prefill = (clock.now - start).inSeconds
  start = clock.now
  _ = try await model.forward([continuation[0]], start: prompt.count, cache: &cache)
  let first = (clock.now - start).inSeconds
  start = clock.now
  for step in 1..<continuation.count {
    _ = try await model.forward([continuation[step]], start: prompt.count + step, cache: &cache)
  }
  return (
    Double(prompt.count) / prefill, first,
    Double(continuation.count - 1) / (clock.now - start).inSeconds
  )
}

/// Every cache on its own prefill of `prompt`, then `continuation`.
func prefillEach(
  _ model: LlamaModel, _ prompt: [Int], continuation: [Int], policies: [BenchPolicy],
  budget: Double
) async throws -> [Speed] {
  let c = model.configuration
  let n = prompt.count
  var full = FullKVCache(configuration: c)
  let f = try await measure(model, prompt, continuation: continuation, cache: &full)
  var rows = [Speed(cache: "full", context: n, prefill: f.prefill, decode: f.decode)]
  for policy in policies {
    let maxTokens = n + continuation.count + 1
    var options = LocalCluster.Options(model: try c.geometry, sequenceTokens: maxTokens)
    options.budgets = policy.budgets(budget).chargingKeyCodes(
      of: policy.worker, headDim: try c.geometry.headDim, tokens: maxTokens,
      heldRows: WorkerOptions.defaultDecodeShipRows)
    options.worker = policy.worker
    options.outputMode = .exact
    options.colocatedDataPlane = policy.colocated
    let cluster = try await LocalCluster.start(options, logger: Logger(label: "bench"))
    let ref = SequenceRef(sequence: 1)
    _ = try await cluster.worker.createSequence(ref, maxTokens: maxTokens)
    var cache = EngineKVCache(engine: cluster.worker, ref: ref, configuration: c)
    let m = try await measure(model, prompt, continuation: continuation, cache: &cache)
    let stats = try await cluster.worker.stats(ref)
    await cluster.shutdown()
    rows.append(
      Speed(
        cache: policy.name, context: n, prefill: m.prefill, decode: m.decode,
        workerShare: Double(stats.workerBytes) / Double(stats.fullKVBytes),
        keptShare: stats.keptShare, movedPerStep: stats.decodeBytesPerStep))
    print(
      "\(policy.name) n=\(n): prefill \(m.prefill) tok/s, seal+first step \(m.firstStep) s, decode \(m.decode) tok/s",
      to: &standardError)
  }
  return rows
}

/// One prefill on the full cache feeding every policy's sequence, then each decodes
/// `continuation` (the policy comparison `hkv fidelity` runs), with its fidelity to the full
/// cache.
func prefillOnce(
  _ model: LlamaModel, _ prompt: [Int], continuation: [Int], policies: [BenchPolicy],
  budget: Double
) async throws -> [Speed] {
  let comparison = CachePolicyComparison(model: model)
  let result = try await comparison.run(
    prompt: prompt, continuation: .forced(continuation),
    policies: policies.map {
      var policy = CachePolicyComparison.Policy(
        name: $0.name, budgets: $0.budgets(budget), worker: $0.worker, outputMode: .exact)
      policy.colocatedDataPlane = $0.colocated
      return policy
    },
    logger: Logger(label: "bench"))
  let n = prompt.count
  print("n=\(n): one prefill \(result.prefillSeconds) s", to: &standardError)
  return result.runs.map { run in
    let isFull = run.policy == "full"
    print(
      "\(run.policy) n=\(n): first step \(run.firstStepSeconds) s, decode \(run.decodeTokensPerSecond) tok/s",
      to: &standardError)
    return Speed(
      cache: run.policy, context: n, prefill: isFull ? Double(n) / result.prefillSeconds : nil,
      decode: run.decodeTokensPerSecond,
      workerShare: isFull ? nil : Double(run.workerBytes) / Double(run.fullKVBytes),
      keptShare: isFull ? nil : run.keptShare,
      movedPerStep: isFull ? nil : run.decodeBytesPerStep, meanKL: run.meanKL,
      top1: run.top1Agreement, breakdown: isFull ? nil : run.breakdown)
  }
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
var rows: [Speed] = []
for n in args.contexts {
  let prompt = Array(ids[..<n])
  let continuation = Array(ids[n..<(n + args.decode)])
  rows += try await (args.prefillEach ? prefillEach : prefillOnce)(
    model, prompt, continuation, args.policies, args.budget)
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
  "SmolLM2-135M, \(ProcessInfo.processInfo.activeProcessorCount) cores; \(args.decode) teacher-forced decode steps (rate from the second); HeteroKV: in-process cluster, budget \(args.budget), recommended settings (one-byte pq codes over \(RecommendedSettings.worker.groupSize) dims unless :pq4), exact outputs; "
    + (args.prefillEach
      ? "each cache prefilled on its own"
      : "one prefill on the full cache feeds every HeteroKV sequence")
)
let llama = { (n: Int) in rows.first { $0.cache == "llama.cpp" && $0.context == n } }
// The cache column fits the longest name (`hcattention:pq4@colocated`).
let nameWidth = max(16, (rows.map(\.cache.count).max() ?? 0) + 1)
print(
  "cache".padding(toLength: nameWidth, withPad: " ", startingAt: 0)
    + "  context  prefill tok/s  decode tok/s  vs full  vs llama.cpp  kept   moved/step  worker share  mean KL  top-1"
)
func cell<T>(_ value: T?, _ width: Int, _ format: (T) -> String) -> String {
  let text = value.map(format) ?? "-"
  return String(repeating: " ", count: max(0, width - text.count)) + text
}
for row in rows {
  let full = rows.first { $0.cache == "full" && $0.context == row.context }!
  let line =
    row.cache.padding(toLength: nameWidth, withPad: " ", startingAt: 0)
    + cell(row.context, 8) { "\($0)" }
    + cell(row.prefill, 15) { String(format: "%.1f", $0) }
    + cell(row.decode, 14) { String(format: "%.2f", $0) }
    + cell(row.decode / full.decode, 9) { String(format: "%.2fx", $0) }
    + cell(llama(row.context).map { row.decode / $0.decode }, 14) { String(format: "%.2fx", $0) }
    + cell(row.keptShare, 7) { String(format: "%.1f%%", $0 * 100) }
    + cell(row.movedPerStep, 12) { String(format: "%.0f KiB", $0 / 1024) }
    + cell(row.workerShare ?? (row.cache == "full" || row.cache == "llama.cpp" ? 1 : nil), 14) {
      String(format: "%.2f%%", $0 * 100)
    }
    + cell(row.meanKL, 9) { String(format: "%.4f", $0) }
    + cell(row.top1, 7) { String(format: "%.3f", $0) }
  print(line)
}
print(llamaNote)
let broken = rows.filter { ($0.breakdown?.layerCalls ?? 0) > 0 }
if !broken.isEmpty {
  print("\nper layer call of the steady steps, ms (overhead = append + attend - compute):")
  print(
    "cache".padding(toLength: nameWidth, withPad: " ", startingAt: 0)
      + "  context  append  attend  compute    plan  fan-out   merge  overhead")
  for row in broken {
    let b = row.breakdown!
    let calls = Double(b.layerCalls) / 1000
    let cells = [
      b.append / calls, b.attend / calls, b.phases.compute / calls, b.phases.plan / calls,
      b.phases.fanOut / calls, b.phases.merge / calls, b.overheadPerLayer * 1000,
    ]
    print(
      row.cache.padding(toLength: nameWidth, withPad: " ", startingAt: 0)
        + String(format: "%8d", row.context)
        + cells.map { String(format: "%8.3f", $0) }.joined())
  }
}

struct StandardError: TextOutputStream {
  mutating func write(_ string: String) { FileHandle.standardError.write(Data(string.utf8)) }
}
nonisolated(unsafe) var standardError = StandardError()
