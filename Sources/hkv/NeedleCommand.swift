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
      For every context and depth, a random passkey is hidden in filler text and asked for at
      the end. Each policy (full, or a HeteroKV budget policy on a cluster started in this
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

  @Option(help: "Policies: full, heterocache, hcattention, uniform; comma-separated.")
  var policies: String = "full,heterocache,hcattention"

  @Option(help: "Memory budget of the HeteroKV policies.")
  var budget: Double = 0.125

  @Option(help: "Answer tokens generated (and compared).")
  var answerTokens: Int = 7

  @Option(help: "The GGUF model file.")
  var model: String?

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
  }

  func run() async throws {
    let contexts = context.split(separator: ",").compactMap { Int($0) }
    let depthList = depths.split(separator: ",").compactMap { Double($0) }
    let policyList = policies.split(separator: ",").map(String.init)
    guard !contexts.isEmpty, contexts.allSatisfy({ (64...8192).contains($0) }) else {
      throw ValidationError("--context: lengths in 64...8192")
    }
    guard !depthList.isEmpty, depthList.allSatisfy({ (0...1).contains($0) }) else {
      throw ValidationError("--depths: values in 0...1")
    }
    for p in policyList where p != "full" && BudgetPolicyKind(rawValue: p) == nil {
      throw ValidationError("bad policy '\(p)': expected full, heterocache, hcattention or uniform")
    }
    let (llama, tokenizer) = try ModelLocation.load(model)
    LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
    let progress = ProgressLine()
    var rng = SplitMix(seed: seed)
    var rows: [Row] = []
    for n in contexts {
      for depth in depthList {
        let passkey = 10_000 + Int(rng.next() % 90_000)
        let prompt = PasskeyPrompt(tokens: n, depth: depth, passkey: passkey, tokenizer: tokenizer)
        let ids = tokenizer.encode(prompt.text)
        // The full cache first: its answer is the text every policy is scored on.
        progress.show("context \(n), depth \(depth): full cache")
        var full = FullKVCache(configuration: llama.configuration)
        let reference = try await answer(llama, ids, cache: &full, forced: nil)
        for policy in policyList {
          progress.show("context \(n), depth \(depth): \(policy)")
          let result: (tokens: [Int], logits: [[Float]])
          if policy == "full" {
            result = reference
          } else {
            var options = LocalCluster.Options(model: try llama.configuration.geometry)
            options.capacityBytes = max(256 << 20, (n + 64) * 30 * 3 * 64 * 4 * 2)
            options.budgets = BudgetSettings(
              policy: BudgetPolicyKind(rawValue: policy)!, memoryFraction: budget, minTokens: 16)
            let cluster = try await LocalCluster.start(options, logger: Logger(label: "needle"))
            do {
              let ref = SequenceRef(sequence: 1)
              _ = try await cluster.worker.createSequence(
                ref, maxTokens: ids.count + answerTokens + 1)
              var cache = EngineKVCache(
                engine: cluster.worker, ref: ref, configuration: llama.configuration)
              // Along the full cache's answer, so every policy is scored on the same text.
              result = try await answer(llama, ids, cache: &cache, forced: reference.tokens)
              await cluster.shutdown()
            } catch {
              await cluster.shutdown()
              throw error
            }
          }
          var kl = 0.0
          var agree = 0
          for (p, q) in zip(reference.logits, result.logits) {
            kl += Self.klDivergence(p, q)
            if Self.argmax(p) == Self.argmax(q) { agree += 1 }
          }
          let steps = max(1, reference.logits.count)
          let text = tokenizer.decode(result.tokens)
          rows.append(
            Row(
              policy: policy, context: ids.count, depthPercent: Int(depth * 100), passkey: passkey,
              answer: text, found: prompt.isAnswered(by: text), meanKL: kl / Double(steps),
              top1Agreement: Double(agree) / Double(steps)))
        }
      }
    }
    progress.finish()
    if json {
      try writeJSON(rows)
      return
    }
    print(
      TextTable(
        ["POLICY", "CONTEXT", "DEPTH", "PASSKEY", "ANSWER", "FOUND", "MEAN KL", "TOP-1"],
        rows: rows.map {
          [
            $0.policy, "\($0.context)", "\($0.depthPercent)%", "\($0.passkey)",
            $0.answer.replacingOccurrences(of: "\n", with: " "), $0.found ? "yes" : "no",
            String(format: "%.4f", $0.meanKL), String(format: "%.3f", $0.top1Agreement),
          ]
        }
      ).render(), terminator: "")
    for policy in policyList {
      let mine = rows.filter { $0.policy == policy }
      print(
        "\(policy): found \(mine.filter(\.found).count)/\(mine.count), mean KL "
          + String(format: "%.4f", mine.map(\.meanKL).reduce(0, +) / Double(max(1, mine.count)))
          + ", top-1 "
          + String(
            format: "%.3f", mine.map(\.top1Agreement).reduce(0, +) / Double(max(1, mine.count))))
    }
  }

  /// The top choice at each answer step and the logits there, feeding `forced` tokens (the
  /// full cache's answer) or, when nil, the top choices themselves (greedy).
  func answer<Cache: ModelKVCache>(
    _ model: LlamaModel, _ ids: [Int], cache: inout Cache, forced: [Int]?
  ) async throws -> (tokens: [Int], logits: [[Float]]) {
    var logits = try await model.forward(ids, start: 0, cache: &cache)
    var tokens: [Int] = []
    var all: [[Float]] = []
    for step in 0..<answerTokens {
      all.append(logits)
      let next = forced.map { $0[min(step, $0.count - 1)] } ?? Self.argmax(logits)
      tokens.append(Self.argmax(logits))
      if step + 1 == answerTokens { break }
      logits = try await model.forward([next], start: ids.count + step, cache: &cache)
    }
    return (tokens, all)
  }

  static func argmax(_ x: [Float]) -> Int { x.indices.max { x[$0] < x[$1] }! }

  /// KL(softmax(p) || softmax(q)) in nats.
  static func klDivergence(_ p: [Float], _ q: [Float]) -> Double {
    func logSoftmax(_ x: [Float]) -> [Double] {
      let m = Double(x.max()!)
      let lse = m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) })
      return x.map { Double($0) - lse }
    }
    let lp = logSoftmax(p)
    let lq = logSoftmax(q)
    var kl = 0.0
    for i in lp.indices { kl += exp(lp[i]) * (lp[i] - lq[i]) }
    return max(0, kl)
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
