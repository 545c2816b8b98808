import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVEval
import HeteroKVLocalCluster
import HeteroKVModel
import HeteroKVTestSupport
import HeteroKVWorker
import Testing

/// The SmolLM2 GGUF file: $HKV_SMOLLM2_GGUF, else the cache scripts/fetch-model.sh fills.
/// The model tests need it; without it they fail saying how to get it (CI fetches it).
func modelPath() throws -> String {
  let path =
    ProcessInfo.processInfo.environment["HKV_SMOLLM2_GGUF"]
    ?? FileManager.default.homeDirectoryForCurrentUser.path
    + "/.cache/heterokv/SmolLM2-135M-Instruct.Q4_1.gguf"
  guard FileManager.default.fileExists(atPath: path) else {
    throw HeteroKVError(.malformedInput, "no model at \(path): run scripts/fetch-model.sh")
  }
  return path
}

/// The model, loaded once for all tests; without the file every model test fails (rather
/// than the process crashing) with the reason and how to fetch it.
let sharedModel = Result<(file: GGUFFile, model: LlamaModel, tokenizer: BPETokenizer), any Error> {
  let file = try GGUFFile(path: try modelPath())
  return (file, try LlamaModel(file: file), try BPETokenizer(gguf: file))
}

/// The shared model, or the error that kept it from loading.
func loadedModel() throws -> (file: GGUFFile, model: LlamaModel, tokenizer: BPETokenizer) {
  try sharedModel.get()
}

@Suite("SmolLM2-135M in Swift", .serialized)
struct ModelTests {
  @Test("the GGUF header says what the model card says")
  func header() throws {
    let shared = try loadedModel()
    let file = shared.file
    #expect(file.version == 3)
    #expect(file.tensors.count == 272)
    let c = shared.model.configuration
    #expect(c.layers == 30 && c.hidden == 576 && c.queryHeads == 9 && c.kvHeads == 3)
    #expect(c.headDim == 64 && c.feedForward == 1536 && c.vocabulary == 49152)
    #expect(c.ropeBase == 100_000 && abs(c.normEpsilon - 1e-5) < 1e-9)
    #expect(file.tensors["blk.0.attn_q.weight"]?.type == .q4_1)
    #expect(file.tensors["token_embd.weight"]?.type == .q8_0)
    #expect(file.tensors["output.weight"] == nil, "the output projection is tied")
  }

  @Test("a truncated or corrupt file is an error that says so")
  func damagedFiles() throws {
    let whole = try Data(contentsOf: URL(fileURLWithPath: try modelPath()), options: .alwaysMapped)
    for (cut, expected) in [(1000, "truncated in its header"), (whole.count - 100, "truncated")] {
      #expect {
        _ = try GGUFFile(data: whole.prefix(cut))
      } throws: { error in
        "\(error)".contains(expected)
      }
    }
    var bad = Data(whole.prefix(64))
    bad[0] = 0x58
    #expect(throws: HeteroKVError.self) { _ = try GGUFFile(data: bad) }
  }

  @Test("text round-trips through the tokenizer; words and control tokens map to single ids")
  func tokenizer() throws {
    let shared = try loadedModel()
    let t = shared.tokenizer
    for text in [
      "The capital of France is", "Hello, world! It's 2026: 3.14159 and   spaces\n\ttabs.",
      "<|im_start|>user\nWhat is the passkey?<|im_end|>\n", "naïve café — 東京 😀",
    ] {
      let ids = t.encode(text)
      #expect(t.decode(ids) == text, "\(ids)")
    }
    let ids = t.encode("<|im_start|>user The capital of France is Paris")
    #expect(ids.first == 1, "<|im_start|> is id 1")
    #expect(t.tokens[t.encode(" Paris")[0]] == "ĠParis")
    #expect(t.encode(" Paris").count == 1)
    #expect(t.encode("2026").count == 4, "digits are split one by one")
  }

  @Test("greedy decoding of \"The capital of France is\" continues with \" Paris\"")
  func paris() async throws {
    let shared = try loadedModel()
    let (model, tokenizer) = (shared.model, shared.tokenizer)
    var cache = FullKVCache(configuration: model.configuration)
    let ids = tokenizer.encode("The capital of France is")
    let logits = try await model.forward(ids, start: 0, cache: &cache)
    let next = logits.indices.max { logits[$0] < logits[$1] }!
    #expect(tokenizer.decode([next]) == " Paris")
  }

  @Test("a chunked prefill then one-token decode gives the logits of one forward over all tokens")
  func incrementalEqualsFull() async throws {
    let shared = try loadedModel()
    let (model, tokenizer) = (shared.model, shared.tokenizer)
    let ids = tokenizer.encode(
      String(repeating: "The quick brown fox jumps over the lazy dog because it can. ", count: 8))
    #expect(ids.count > 90)
    var whole = FullKVCache(configuration: model.configuration)
    let reference = try await model.forward(ids, start: 0, cache: &whole)
    // Chunks of 24 tokens (72 query rows: the blocked prefill path), then the decode path.
    var cache = FullKVCache(configuration: model.configuration)
    _ = try await model.prefill(Array(ids.prefix(80)), cache: &cache, chunk: 24)
    var logits: [Float] = []
    for (i, id) in ids.enumerated().dropFirst(80) {
      logits = try await model.forward([id], start: i, cache: &cache)
    }
    let diff = zip(logits, reference).map { abs($0 - $1) }.max()!
    let scale = reference.map(abs).max()!
    #expect(diff / scale < 1e-3, "max difference \(diff) of \(scale)")
  }
}

@Suite("SmolLM2 on HeteroKV", .serialized)
struct ModelOnHeteroKVTests {
  @Test("at 100% budget, decoding on HeteroKV gives the full cache's logits (1e-3)")
  func fullBudgetLogits() async throws {
    let shared = try loadedModel()
    let (model, tokenizer) = (shared.model, shared.tokenizer)
    var options = LocalCluster.Options(model: try model.configuration.geometry)
    options.capacityBytes = 256 << 20
    options.budgets = BudgetSettings(policy: .heterocache, memoryFraction: 1, minTokens: 16)
    options.worker = WorkerSettings(
      keyCodec: .scalar, keyBits: 4, groupSize: 4, window: 16, sinks: 4, tau: 1)
    options.outputMode = .exact
    let cluster = try await LocalCluster.start(options, logger: quietLogger)
    do {
      let ref = SequenceRef(sequence: 1)
      _ = try await cluster.worker.createSequence(ref, maxTokens: 256)
      var hetero = EngineKVCache(
        engine: cluster.worker, ref: ref, configuration: model.configuration)
      var full = FullKVCache(configuration: model.configuration)
      let ids = tokenizer.encode(
        "Alice keeps her bicycle in the garage. Bob keeps his kayak by the lake. Where does Alice keep her bicycle? In the"
      )
      var a = try await model.forward(ids, start: 0, cache: &full)
      var b = try await model.forward(ids, start: 0, cache: &hetero)
      var position = ids.count
      for step in 0..<4 {
        let next = a.indices.max { a[$0] < a[$1] }!
        a = try await model.forward([next], start: position, cache: &full)
        b = try await model.forward([next], start: position, cache: &hetero)
        position += 1
        let diff = zip(a, b).map { abs($0 - $1) }.max()!
        let scale = a.map(abs).max()!
        #expect(diff / scale < 1e-3, "step \(step): \(diff) of \(scale)")
      }
      let stats = try await cluster.worker.stats(ref)
      #expect(stats.tokens == ids.count + 4)
      #expect(stats.heads.count == 30 * 3)
      await cluster.shutdown()
    } catch {
      await cluster.shutdown()
      throw error
    }
  }
}

@Suite("hkv generate", .serialized)
struct GenerateCommandTests {
  @Test(
    "hkv generate continues a five-token prompt with \" Paris\" on the full cache and on both policies at 12.5%"
  )
  func generate() throws {
    // Five tokens are fewer than the exact window and sinks: the budget cannot be met at this
    // length and must not refuse the prompt (it once did, for heterocache).
    for extra in [
      ["--full"], ["--policy", "heterocache", "--budget", "0.125"],
      ["--policy", "hcattention", "--budget", "0.125"],
    ] {
      let run = try runHKV(
        [
          "generate", "--prompt", "The capital of France is", "--max-tokens", "2", "--model",
          try modelPath(),
        ]
          + extra)
      #expect(run.status == 0, "\(run.err)")
      #expect(String(decoding: run.out, as: UTF8.self).hasPrefix(" Paris"), "\(extra)")
    }
    let missing = try runHKV(["generate", "--prompt", "x", "--model", "/nonexistent.gguf"])
    #expect(missing.status != 0)
    #expect(missing.err.contains("scripts/fetch-model.sh"), "\(missing.err)")
  }
}

@Suite("Passkey retrieval", .serialized)
struct PasskeyTests {
  @Test("a passkey hidden mid-way in a 600-token prompt is answered with the full cache")
  func fullCacheFindsThePasskey() async throws {
    let shared = try loadedModel()
    let (model, tokenizer) = (shared.model, shared.tokenizer)
    let prompt = PasskeyPrompt(tokens: 600, depth: 0.5, passkey: 58_213, tokenizer: tokenizer)
    let ids = tokenizer.encode(prompt.text)
    #expect((560...640).contains(ids.count), "\(ids.count) tokens")
    var cache = FullKVCache(configuration: model.configuration)
    var logits = try await model.forward(ids, start: 0, cache: &cache)
    var out: [Int] = []
    for step in 0..<7 {
      let next = logits.indices.max { logits[$0] < logits[$1] }!
      out.append(next)
      logits = try await model.forward([next], start: ids.count + step, cache: &cache)
    }
    let answer = tokenizer.decode(out)
    #expect(prompt.isAnswered(by: answer), "answered \"\(answer)\"")
  }
}

@Suite("hkv trace")
struct TraceCommandTests {
  @Test("hkv trace writes the model's attention in the trace format hkv eval reads")
  func trace() throws {
    let shared = try loadedModel()
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-trace-\(getpid())")
    defer { try? FileManager.default.removeItem(at: dir) }
    let prompt = dir.appendingPathExtension("txt")
    defer { try? FileManager.default.removeItem(at: prompt) }
    try "The quick brown fox jumps over the lazy dog. The capital of France is".write(
      to: prompt, atomically: true, encoding: .utf8)
    let run = try runHKV([
      "trace", "--prompt-file", prompt.path, "--out", dir.path, "--steps", "3", "--model",
      try modelPath(),
    ])
    #expect(run.status == 0, "\(run.err)")
    let trace = try TraceWorkload(directory: dir)
    #expect(trace.geometry.layers == 30 && trace.geometry.kvHeads == 3)
    #expect(trace.decodeSteps == 3)
    #expect(
      trace.contextLength
        == shared.tokenizer.encode(
          "The quick brown fox jumps over the lazy dog. The capital of France is"
        ).count)
    let layer = try trace.layer(29)
    #expect(layer.heads.count == 3 && layer.heads[0].decodeQueries.count == 3)
    #expect(layer.heads[0].decodeQueries[0].count == 3 * 64)
  }
}

@Suite("Comparing cache policies", .serialized)
struct ComparisonTests {
  static let text =
    "Alice keeps her bicycle in the garage. Bob keeps his kayak by the lake. Carol keeps her violin under the bed. Where does Alice keep her bicycle? In the"

  @Test(
    "one shared prefill: HeteroKV at 100% budget and tau 1 matches the full cache at every step")
  func sharedPrefillAtFullBudget() async throws {
    let shared = try loadedModel()
    let ids = shared.tokenizer.encode(Self.text)
    let exact = CachePolicyComparison.Policy(
      name: "hcattention-exact",
      budgets: BudgetSettings(policy: .hcattention, memoryFraction: 1, minTokens: 16),
      worker: WorkerSettings(window: 8, sinks: 4, tau: 1), outputMode: .exact)
    let lossy = CachePolicyComparison.Policy(
      name: "uniform-tiny",
      budgets: BudgetSettings(policy: .uniform, memoryFraction: 0.05, minTokens: 2),
      worker: WorkerSettings(window: 0, sinks: 0, tau: 1), outputMode: .exact)
    var comparison = CachePolicyComparison(model: shared.model)
    comparison.prefillChunk = 16  // several prompt chunks before the codebook is trained
    let result = try await comparison.run(
      prompt: ids, continuation: .greedy(steps: 4), policies: [exact, lossy],
      logger: quietLogger)
    #expect(result.runs.map(\.policy) == ["full", "hcattention-exact", "uniform-tiny"])
    #expect(result.fedTokens == result.runs[0].topTokens, "greedy: the full cache's choices")
    let full = result.runs[0]
    #expect(full.meanKL == 0 && full.top1Agreement == 1)
    let run = result.runs[1]
    #expect(run.maxKL < 1e-4, "max KL \(run.maxKL)")
    #expect(run.top1Agreement == 1)
    #expect(run.workerBytes > 0 && run.fullKVBytes == (ids.count + 3) * 30 * 3 * 64 * 4)
    // A cache of 2 tokens per head must drift from the full cache: the comparison sees it.
    #expect(result.runs[2].meanKL > run.meanKL * 10 + 1e-3, "\(result.runs[2].meanKL)")
  }

  @Test("offline calibration profiles every head of the model, and a sequence accepts them")
  func calibration() async throws {
    let shared = try loadedModel()
    let ids = shared.tokenizer.encode(Self.text)
    let comparison = CachePolicyComparison(model: shared.model)
    let profiles = try await comparison.calibrateProfiles(
      prompt: Array(ids.dropLast(4)), decode: Array(ids.suffix(4)),
      configuration: HeteroCacheConfiguration())
    #expect(profiles.count == 30 * 3)
    #expect(Set(profiles.map { "\($0.layer)/\($0.kvHead)" }).count == 90)
    #expect(profiles.allSatisfy { (0...1).contains($0.stability) })
    var policy = CachePolicyComparison.Policy(
      name: "heterocache",
      budgets: BudgetSettings(policy: .heterocache, memoryFraction: 0.5, minTokens: 4))
    policy.profiles = profiles
    let result = try await comparison.run(
      prompt: ids, continuation: .greedy(steps: 2), policies: [policy], logger: quietLogger)
    // Half the budget with calibrated roles stays close to the full cache (measured: KL 0.019,
    // top-1 1.0 over these 2 steps).
    #expect(result.runs.count == 2)
    #expect(result.runs[1].meanKL < 0.1, "\(result.runs[1].meanKL)")
    #expect(result.runs[1].top1Agreement >= 0.5)
  }

  @Test("hkv fidelity reports KL and top-1 per policy on a text file, and refuses a short one")
  func fidelityCommand() throws {
    let file = FileManager.default.temporaryDirectory.appendingPathComponent(
      "hkv-fidelity-\(getpid()).txt")
    defer { try? FileManager.default.removeItem(at: file) }
    try String(repeating: Self.text + " garage.\n", count: 4).write(
      to: file, atomically: true, encoding: .utf8)
    let run = try runHKV([
      "fidelity", "--text-file", file.path, "--context", "96", "--steps", "3", "--policies",
      "full,hcattention", "--budget", "0.5", "--json", "--model", try modelPath(),
    ])
    #expect(run.status == 0, "\(run.err)")
    let report = try JSONSerialization.jsonObject(with: run.out) as? [String: Any]
    let runs = try #require(report?["runs"] as? [[String: Any]])
    #expect(runs.map { $0["policy"] as? String } == ["full", "hcattention"])
    #expect(runs[0]["mean_kl"] as? Double == 0)
    let kl = try #require(runs[1]["mean_kl"] as? Double)
    // At half the budget and tau 0.999 the policy is all but exact (measured: KL 1e-8).
    #expect(kl >= 0 && kl < 0.01, "\(kl)")
    #expect((runs[1]["top1_agreement"] as? Double ?? 0) >= 2.0 / 3)
    // Sparsity beside fidelity: the full cache attends everything and moves nothing; the
    // policy keeps a share of the context and moves bytes to and from the memory nodes.
    #expect(runs[0]["kept_share"] as? Double == 1)
    #expect(runs[0]["decode_bytes_per_step"] as? Double == 0)
    let kept = try #require(runs[1]["kept_share"] as? Double)
    #expect(kept > 0 && kept <= 1, "\(kept)")
    #expect((runs[1]["decode_bytes_per_step"] as? Double ?? 0) > 0)
    let short = try runHKV([
      "fidelity", "--text-file", file.path, "--context", "4000", "--model", try modelPath(),
    ])
    #expect(short.status != 0)
    #expect(short.err.contains("add --text-file"), "\(short.err)")
    // A running cluster's worker reaches its nodes as its own file says: the flag is refused.
    let misplaced = try runHKV([
      "fidelity", "--text-file", file.path, "--cluster", file.path, "--data-plane", "colocated",
      "--model", try modelPath(),
    ])
    #expect(misplaced.status != 0)
    #expect(misplaced.err.contains("--data-plane colocated applies to clusters started here"))
  }
}

@Suite("Comparing against a running worker", .serialized)
struct RemoteComparisonTests {
  @Test("a policy on a worker's gRPC engine API compares like one in process")
  func remoteEngine() async throws {
    let shared = try loadedModel()
    let model = shared.model
    var options = LocalCluster.Options(model: try model.configuration.geometry)
    options.capacityBytes = 256 << 20
    options.serveEngine = true
    options.budgets = BudgetSettings(policy: .hcattention, memoryFraction: 1, minTokens: 16)
    options.worker = WorkerSettings(window: 8, sinks: 4, tau: 1)
    options.outputMode = .exact
    let cluster = try await LocalCluster.start(options, logger: quietLogger)
    do {
      let ids = shared.tokenizer.encode(ComparisonTests.text)
      let result = try await EngineClient.with(
        address: cluster.engineAddress!, geometry: try model.configuration.geometry
      ) { client in
        try await CachePolicyComparison(model: model).run(
          prompt: ids, continuation: .greedy(steps: 3),
          policies: [.init(name: "remote", engine: client)], logger: quietLogger)
      }
      #expect(result.runs.map(\.policy) == ["full", "remote"])
      #expect(result.runs[1].maxKL < 1e-4, "\(result.runs[1].maxKL)")
      #expect(result.runs[1].fullKVBytes == (ids.count + 2) * 30 * 3 * 64 * 4)
      // tau 1 keeps all but the tokens whose weight rounds to nothing in f32; the figures come
      // over gRPC.
      #expect(result.runs[1].keptShare > 0.95, "\(result.runs[1].keptShare)")
      #expect(result.runs[1].decodeBytesPerStep > 0)
      await cluster.shutdown()
    } catch {
      await cluster.shutdown()
      throw error
    }
  }

  @Test("hkv needle reports each policy's answer per context and depth as JSON")
  func needleCommand() throws {
    let run = try runHKV([
      "needle", "--context", "160", "--depths", "0.5", "--policies", "full,hcattention",
      "--budget", "0.5", "--answer-tokens", "3", "--json", "--model", try modelPath(),
    ])
    #expect(run.status == 0, "\(run.err)")
    let rows = try #require(try JSONSerialization.jsonObject(with: run.out) as? [[String: Any]])
    #expect(rows.map { $0["policy"] as? String } == ["full", "hcattention"])
    #expect(
      rows.allSatisfy { ($0["context"] as? Int ?? 0) > 100 && $0["depth_percent"] as? Int == 50 })
    #expect(rows[0]["mean_kl"] as? Double == 0)
    #expect(rows[0]["kept_share"] as? Double == 1)
    #expect((rows[1]["kept_share"] as? Double ?? 0) > 0)
    #expect((rows[1]["decode_bytes_per_step"] as? Double ?? 0) > 0)
    let bad = try runHKV(["needle", "--policies", "full,lru", "--model", try modelPath()])
    #expect(bad.status != 0)
    #expect(bad.err.contains("bad policy 'lru'"), "\(bad.err)")
  }
}

@Suite("hkv fidelity --write-trace")
struct FidelityTraceTests {
  @Test(
    "writes the attention it compared in the trace format: every layer, the prompt's tokens and the compared steps, which hkv eval then reads"
  )
  func writesTheTraceItDecoded() throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
      "hkv-fidelity-trace-\(ProcessInfo.processInfo.processIdentifier)")
    defer { try? FileManager.default.removeItem(at: directory) }
    let text = directory.appendingPathExtension("txt")
    defer { try? FileManager.default.removeItem(at: text) }
    try String(
      repeating: "A key-value cache keeps what attention has seen, so decoding does not redo it. ",
      count: 8
    ).write(to: text, atomically: true, encoding: .utf8)
    let run = try runHKV([
      "fidelity", "--model", try modelPath(), "--text-file", text.path, "--context", "48",
      "--steps", "3", "--policies", "full,hcattention", "--write-trace", directory.path, "--json",
    ])
    #expect(run.status == 0, "\(run.err)")
    let trace = try TraceWorkload(directory: directory)
    #expect(trace.geometry.layers == 30 && trace.geometry.kvHeads == 3)
    #expect(trace.contextLength == 48 && trace.decodeSteps == 3)
    let eval = try runHKV([
      "eval", "--trace", directory.path, "--budgets", "0.5", "--policies", "hcattention-exact,full",
      "--json",
    ])
    #expect(eval.status == 0, "\(eval.err)")
    let rows = try #require(
      try JSONSerialization.jsonObject(with: eval.out) as? [[String: Any]])
    #expect(rows.count == 2)
    // The full cache is exact on its own trace.
    let full = try #require(rows.first { $0["policy"] as? String == "full" })
    #expect((full["relativeL2Error"] as? Double ?? 1) < 1e-3)
  }
}
