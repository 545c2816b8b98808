import ArgumentParser
import Foundation
import HeteroKVEval
import HeteroKVModel

/// `hkv trace`: runs SmolLM2-135M on a prompt and dumps its real Q/K/V in the trace format.
struct TraceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "trace",
    abstract: "Dump SmolLM2-135M's real attention (Q/K/V after RoPE) for hkv eval --trace.",
    discussion: """
      Prefills the prompt on the full cache, decodes --steps greedy tokens, and writes every
      layer's prefill keys and values, the last 32 prefill queries and each decode step's
      q, k, v in the trace format (docs/trace-format.md), fp16.
      Then: hkv eval --trace DIR
      """)

  @Option(help: "A file holding the prompt.")
  var promptFile: String

  @Option(help: "Directory to write the trace to.")
  var out: String

  @Option(help: "Decode steps to record.")
  var steps: Int = 16

  @Option(help: "The GGUF model file.")
  var model: String?

  func run() async throws {
    guard (1...1024).contains(steps) else { throw ValidationError("--steps must be in 1...1024") }
    let text = try readTextFile(promptFile, flag: "--prompt-file")
    let (llama, tokenizer) = try ModelLocation.load(model)
    let ids = tokenizer.encode(text)
    guard ids.count >= 2 else { throw ValidationError("the prompt needs at least 2 tokens") }
    try await Self.record(llama, prompt: ids, steps: steps, forced: nil, to: out)
  }

  /// Runs the full cache over `prompt`, then `steps` tokens one at a time (`forced`, or the
  /// greedy choice when nil), recording its attention, and writes it as a trace (fp16).
  static func record(
    _ llama: LlamaModel, prompt: [Int], steps: Int, forced: [Int]?, to directory: String
  ) async throws {
    var cache = RecordingKVCache(configuration: llama.configuration)
    var logits = try await llama.forward(prompt, start: 0, cache: &cache)
    for step in 0..<steps {
      let next = forced?[step] ?? NextTokenDistance.argmax(logits)
      logits = try await llama.forward([next], start: prompt.count + step, cache: &cache)
    }
    let workload = try cache.workload(name: "SmolLM2-135M-Instruct")
    try TraceWorkload.write(workload, to: URL(fileURLWithPath: directory), dtype: .float16)
    FileHandle.standardError.write(
      Data(
        "wrote \(directory): \(llama.configuration.layers) layers, \(prompt.count) prefill tokens, \(steps) decode steps\n"
          .utf8))
  }
}
