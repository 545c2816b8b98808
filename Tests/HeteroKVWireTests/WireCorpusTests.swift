import Foundation
import HeteroKVWire
import Testing

/// Replays the libFuzzer corpus of the data-plane decoders (scripts/fuzz-wire.sh grows it):
/// every input must be rejected cleanly or round-trip bit for bit.
@Suite("Wire decoder corpus")
struct WireCorpusTests {
  static let corpus = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fuzz/Corpus/wire")

  @Test("every corpus input is rejected cleanly or round-trips")
  func replay() throws {
    if ProcessInfo.processInfo.environment["HKV_WRITE_WIRE_SEEDS"] != nil {
      for (i, seed) in WireCorpusSeeds.all().enumerated() {
        try Data(seed).write(to: Self.corpus.appendingPathComponent(String(format: "seed-%02d", i)))
      }
    }
    let files = try FileManager.default.contentsOfDirectory(
      at: Self.corpus, includingPropertiesForKeys: nil)
    #expect(files.count >= 16, "the corpus at \(Self.corpus.path) is missing or tiny")
    for file in files {
      let bytes = try [UInt8](Data(contentsOf: file))
      #expect(throws: Never.self, "\(file.lastPathComponent)") {
        try DecoderExercise.run(bytes)
      }
    }
  }

  @Test("valid messages of every kind, whole frames and noise pass the exercise")
  func exerciseAcceptsValidMessages() throws {
    // Valid messages of every kind pass; so does noise.
    for seed in WireCorpusSeeds.all() { try DecoderExercise.run(seed) }
    try DecoderExercise.run(Array(repeating: 0xFF, count: 64))
  }
}

/// Valid encodings of every message kind, each behind the selector byte DecoderExercise uses,
/// plus whole frames: the corpus's seeds.
enum WireCorpusSeeds {
  static func all() -> [[UInt8]] {
    let shard = ShardID(namespace: 3, sequence: 9, layer: 1, kvHead: 2, chunk: 0)
    let halves = (0..<128).map { Float16(Float($0) / 7) }
    let messages: [(UInt8, any DataPlaneMessage)] = [
      (0, PutRequest(shard: shard, startToken: 4, headDim: 64, values: halves, keys: halves)),
      (1, PutResponse(shardRows: 6, usedBytes: 4096, capacityBytes: 1 << 20)),
      (2, DropRequest.sequence(9, namespace: 3)),
      (4, GatherRequest(shard: shard, tokens: [0, 1, 5], includeKeys: true)),
      (
        6,
        PartialAttentionRequest(
          shard: shard, mode: .weights, headDim: 64, scale: 0.125,
          heads: [.weighted(tokens: [1, 2], weights: [0.5, 0.5])])
      ),
      (
        6,
        PartialAttentionRequest(
          shard: shard, mode: .exact, headDim: 4, scale: 0.5,
          heads: (0..<4).map { _ in .exact(tokens: [0, 3, 7], query: [1, 2, 3, 4]) })
      ),
      (
        7,
        PartialAttentionResponse(
          headDim: 2, maxScores: [1, -.infinity], sumExps: [2, 0], outputs: [1, 2, 0, 0])
      ),
      (
        8,
        StatsResponse(
          capacityBytes: 1, usedBytes: 2, storedBytes: 3, shardCount: 4, sequenceCount: 5,
          rowCount: 6)
      ),
      (9, ChallengeResponse(nonce: Array(0..<32))),
      (10, AuthenticateRequest(tenant: "alice", proof: Array(repeating: 7, count: 32))),
      (11, StatsRequest()), (12, PingRequest()), (13, ChallengeRequest()),
      (14, AuthenticateResponse()),
    ]
    var seeds = messages.map { selector, message in [selector] + Array(buffer: message.encoded()) }
    for (i, (_, message)) in messages.prefix(5).enumerated() {
      let frame = Frame(
        opcode: type(of: message).opcode.rawValue, flags: [], requestID: UInt64(i),
        payload: message.encoded())
      seeds.append([15] + Array(buffer: frame.serialized()))
    }
    return seeds
  }
}
