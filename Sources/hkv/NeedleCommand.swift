import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVLocalCluster
import HeteroKVModel
import HeteroKVWorker
import Logging

/// `hkv needle`: passkey retrieval with SmolLM2-135M per policy, context and depth, and how
/// far each policy's next-token distributions drift from the full cache's.
struct NeedleCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "needle",
    abstract: "Passkey retrieval and next-token fidelity of SmolLM2-135M on each cache policy.",
    discussion: """
      For every context and depth, a random passkey is hidden in filler text (or in the text of
      --haystack-file) and asked for at the end. Each policy (full, or a HeteroKV budget policy on a cluster started in this
      process at --budget) answers: the full cache greedily, every other policy token by token
      along the full cache's answer (teacher forcing), its own top choice at each step making
      its answer; the answer counts when it starts with the passkey. Over those steps, the KL
      divergence of each policy's next-token distribution from the full cache's and the top-1
      agreement are averaged.
      """)

  @Option(help: "Prompt lengths in tokens, comma-separated.")
  var context: String = "2048,4096,8000"

  @Option(help: "Depths of the passkey (0 start ... 1 end), comma-separated.")
  var depths: String = "0.1,0.5,0.9"

  @OptionGroup var cache: ComparisonOptions

  @Option(help: "Answer tokens generated (and compared).")
  var answerTokens: Int = 7

  @Option(help: "The GGUF model file.")
  var model: String?

  @Option(
    help:
      "Hide the passkey in this text (cut to each context, repeated when shorter) instead of the repeated filler sentences."
  )
  var haystackFile: String?

  @Option(
    help:
      "Also write each prompt to DIR/passkey-<context>-<depth%>-<passkey>.txt (to answer with hkv generate --prompt-file)."
  )
  var writePrompts: String?

  @Option(help: "Random seed of the passkeys.")
  var seed: UInt64 = 1

  @Flag(help: "Print JSON.")
  var json = false

  struct Row: Codable {
    var policy: String
    var context, depthPercent, passkey: Int
    var answer: String
    var found: Bool
    var meanKL, top1Agreement: Double
    /// Mean share of the context tokens a query head's decode step kept.
    var keptShare: Double
    /// Mean bytes a decode step moved between worker and memory nodes.
    var decodeBytesPerStep: Double
  }

  func run() async throws {
    let contexts = context.split(separator: ",").compactMap { Int($0) }
    let depthList = depths.split(separator: ",").compactMap { Double($0) }
    guard !contexts.isEmpty, contexts.allSatisfy({ (64...8192).contains($0) }) else {
      throw ValidationError("--context: lengths in 64...8192")
    }
    guard !depthList.isEmpty, depthList.allSatisfy({ (0...1).contains($0) }) else {
      throw ValidationError("--depths: values in 0...1")
    }
    guard (1...256).contains(answerTokens) else {
      throw ValidationError("--answer-tokens must be in 1...256")
    }
    _ = try cache.resolved()  // bad flags fail before the model loads
    let haystack = try haystackFile.map { try readTextFile($0, flag: "--haystack-file") }
    if let haystack, haystack.allSatisfy(\.isWhitespace) {
      throw ValidationError("--haystack-file \(haystackFile!) holds no text")
    }
    let (llama, tokenizer) = try ModelLocation.load(model)
    LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
    let progress = ProgressLine()
    var rng = SplitMix(seed: seed)
    let cases = contexts.flatMap { n in depthList.map { (n, $0) } }.map { n, depth in
      (n, depth, 10_000 + Int(rng.next() % 90_000))
    }
    let (rows, names) = try await cache.withPolicies(model: llama, tokenizer: tokenizer) {
      includeFull, policyList in
      var rows: [Row] = []
      for (n, depth, passkey) in cases {
        let prompt =
          if let haystack {
            PasskeyPrompt(
              tokens: n, depth: depth, passkey: passkey, tokenizer: tokenizer, haystack: haystack)
          } else {
            PasskeyPrompt(tokens: n, depth: depth, passkey: passkey, tokenizer: tokenizer)
          }
        let ids = tokenizer.encode(prompt.text)
        if let writePrompts {
          try FileManager.default.createDirectory(
            atPath: writePrompts, withIntermediateDirectories: true)
          let path = "\(writePrompts)/passkey-\(n)-\(Int(depth * 100))-\(passkey).txt"
          guard FileManager.default.createFile(atPath: path, contents: Data(prompt.text.utf8))
          else {
            throw CommandFailure(description: "--write-prompts: cannot write \(path)")
          }
        }
        progress.show("context \(ids.count), depth \(depth): one prefill, then each cache decodes")
        // The full cache answers greedily; every policy is fed the same tokens, its own top
        // choice at each step making its answer.
        let result = try await CachePolicyComparison(model: llama).run(
          prompt: ids, continuation: .greedy(steps: answerTokens), policies: policyList)
        for run in result.runs where includeFull || run.policy != "full" {
          let text = tokenizer.decode(run.topTokens)
          rows.append(
            Row(
              policy: run.policy, context: ids.count, depthPercent: Int(depth * 100),
              passkey: passkey, answer: text, found: prompt.isAnswered(by: text),
              meanKL: run.meanKL, top1Agreement: run.top1Agreement, keptShare: run.keptShare,
              decodeBytesPerStep: run.decodeBytesPerStep))
        }
      }
      return (rows, (includeFull ? ["full"] : []) + policyList.map(\.name))
    }
    progress.finish()
    if json {
      try writeJSON(rows)
      return
    }
    print(
      TextTable(
        [
          "POLICY", "CONTEXT", "DEPTH", "PASSKEY", "ANSWER", "FOUND", "MEAN KL", "TOP-1", "KEPT",
          "MOVED/STEP",
        ],
        rows: rows.map {
          [
            $0.policy, "\($0.context)", "\($0.depthPercent)%", "\($0.passkey)",
            $0.answer.replacingOccurrences(of: "\n", with: " "), $0.found ? "yes" : "no",
            String(format: "%.4f", $0.meanKL), String(format: "%.3f", $0.top1Agreement),
            String(format: "%.1f%%", $0.keptShare * 100),
            ByteSize.format(UInt64($0.decodeBytesPerStep)),
          ]
        }
      ).render(), terminator: "")
    for policy in names {
      let mine = rows.filter { $0.policy == policy }
      print(
        "\(policy): found \(mine.filter(\.found).count)/\(mine.count), mean KL "
          + String(format: "%.4f", mine.map(\.meanKL).reduce(0, +) / Double(max(1, mine.count)))
          + ", top-1 "
          + String(
            format: "%.3f", mine.map(\.top1Agreement).reduce(0, +) / Double(max(1, mine.count)))
          + ", kept "
          + String(
            format: "%.1f%%",
            100 * mine.map(\.keptShare).reduce(0, +) / Double(max(1, mine.count))))
    }
  }
}

/// A small seeded generator for reproducible passkeys.
struct SplitMix {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}
