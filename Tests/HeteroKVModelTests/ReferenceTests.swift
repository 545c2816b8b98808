import Foundation
import HeteroKVModel
import Testing

/// Values computed by implementations that share no code with HeteroKV
/// (scripts/reference-model.py): llama.cpp's tokenizer, and a numpy forward pass over weights
/// dequantized by llama.cpp's `gguf` Python package.
struct ReferenceFixture: Decodable {
  struct Tokenized: Decodable {
    var text: String
    var ids: [Int]
  }
  var tokens: [Int]
  var afterLayer0: [Float]
  var topLogitIDs: [Int]
  var topLogits: [Float]
  var tokenIDs: [Tokenized]

  static func load() throws -> ReferenceFixture {
    let url = try #require(
      Bundle.module.url(
        forResource: "smollm2-reference", withExtension: "json", subdirectory: "Fixtures"))
    return try JSONDecoder().decode(ReferenceFixture.self, from: Data(contentsOf: url))
  }
}

@Suite("SmolLM2-135M against an independent implementation", .serialized)
struct ReferenceTests {
  @Test("the tokenizer gives llama.cpp's token ids")
  func tokenIDs() throws {
    let shared = try loadedModel()
    let fixture = try ReferenceFixture.load()
    #expect(fixture.tokenIDs.count == 4)
    for case let (text, ids) in fixture.tokenIDs.map({ ($0.text, $0.ids) }) {
      #expect(shared.tokenizer.encode(text) == ids, "\(text)")
    }
  }

  @Test("layer 0's output matches numpy's on a fixed input")
  func firstLayer() async throws {
    let shared = try loadedModel()
    let fixture = try ReferenceFixture.load()
    var cache = FullKVCache(configuration: shared.model.configuration)
    let x = try await shared.model.hiddenStates(fixture.tokens, start: 0, cache: &cache, layers: 1)
    #expect(x.count == fixture.afterLayer0.count)
    var worst: Float = 0
    var norm: Float = 0
    for (a, b) in zip(x, fixture.afterLayer0) {
      worst = max(worst, abs(a - b))
      norm = max(norm, abs(b))
    }
    // f32 weights and an fp16 cache against float64 numpy: a small fraction of the largest value.
    #expect(worst <= 5e-4 * norm, "largest difference \(worst) against values up to \(norm)")
  }

  @Test("the whole model's top logits match numpy's")
  func wholeModel() async throws {
    let shared = try loadedModel()
    let fixture = try ReferenceFixture.load()
    var cache = FullKVCache(configuration: shared.model.configuration)
    let logits = try await shared.model.forward(fixture.tokens, start: 0, cache: &cache)
    #expect(NextTokenDistance.argmax(logits) == fixture.topLogitIDs[0])
    for (id, expected) in zip(fixture.topLogitIDs, fixture.topLogits) {
      #expect(abs(logits[id] - expected) < 0.01, "token \(id): \(logits[id]) vs \(expected)")
    }
  }
}
