import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVWorker
import Testing

/// The kind of a `HeteroKVError` thrown by `body`, nil when it did not throw one.
func refusal(_ body: () async throws -> Void) async -> HeteroKVError? {
  do {
    try await body()
    return nil
  } catch let error as HeteroKVError {
    return error
  } catch {
    return HeteroKVError(.internalError, "not a HeteroKVError: \(error)")
  }
}

@Suite("Worker input checks", .serialized)
struct WorkerValidationTests {
  @Test("bad shapes, layers and calls are refused by name and change nothing")
  func badInputIsRefused() async throws {
    let replay = try tinyWorkload(tokens: 512, steps: 1)
    try await withCluster(fullBudgetOptions(serveEngine: true)) { cluster in
      let worker = cluster.worker
      let ref = SequenceRef(sequence: 9)
      _ = try await worker.createSequence(ref, maxTokens: 1024)
      let width = tinyModel.kvHeads * tinyModel.headDim
      let short = await refusal {
        try await worker.append(
          ref, layer: 0, tokens: 2, keys: Array(repeating: 0, count: width),
          values: Array(repeating: 0, count: 2 * width))
      }
      #expect(short?.code == .invalidArgument)
      #expect(short?.message.contains("[tokens][2][64]") == true, "\(short?.message ?? "")")
      let layer = await refusal {
        try await worker.append(
          ref, layer: 5, tokens: 1, keys: Array(repeating: 0, count: width),
          values: Array(repeating: 0, count: width))
      }
      #expect(layer?.code == .invalidArgument)
      let nan = await refusal {
        try await worker.append(
          ref, layer: 0, tokens: 1, keys: [Float16.nan] + Array(repeating: 0, count: width - 1),
          values: Array(repeating: 0, count: width))
      }
      #expect(nan?.code == .invalidArgument)
      // More tokens than the sequence was opened (and reserved) for.
      let beyond = await refusal {
        try await worker.append(
          ref, layer: 0, tokens: 1025, keys: Array(repeating: 0, count: 1025 * width),
          values: Array(repeating: 0, count: 1025 * width))
      }
      #expect(beyond?.code == .resourceExhausted)
      #expect(beyond?.message.contains("max_tokens 1024") == true, "\(beyond?.message ?? "")")
      #expect(try await worker.stats(ref).tokens == 0, "nothing was appended")
      // Attention before every layer has a prefill.
      try await worker.append(
        ref, layer: 0, tokens: 1, keys: Array(repeating: 0, count: width),
        values: Array(repeating: 0, count: width))
      let early = await refusal {
        _ = try await worker.attend(
          ref, layer: 0, queries: Array(repeating: 0, count: 8 * 64), withSelection: false)
      }
      #expect(early?.code == .failedPrecondition)
      #expect(early?.message.contains("layer 1 has no prefill") == true, "\(early?.message ?? "")")
      let unknown = await refusal { _ = try await worker.stats(SequenceRef(sequence: 404)) }
      #expect(unknown?.code == .unknownSequence)
      let twice = await refusal { _ = try await worker.createSequence(ref, maxTokens: 1024) }
      #expect(twice?.code == .alreadyExists)

      // HeteroCache needs profiles or the prefill's last queries.
      let bare = SequenceRef(sequence: 10)
      _ = try await worker.createSequence(bare, maxTokens: 1024)
      for layer in replay.layers {
        try await worker.append(
          bare, layer: layer.layer, tokens: 512,
          keys: replayRows(replay, layer.layer, keys: true),
          values: replayRows(replay, layer.layer, keys: false))
      }
      let noProfiles = await refusal {
        _ = try await worker.attend(
          bare, layer: 0, queries: Array(repeating: 0.1, count: 8 * 64), withSelection: false)
      }
      #expect(noProfiles?.code == .failedPrecondition)
      #expect(noProfiles?.message.contains("observation rows") == true)

      // Over gRPC, sizes are checked before anything is decoded.
      try await EngineClient.with(address: cluster.engineAddress!, geometry: tinyModel) { client in
        let wrong = await refusal {
          _ = try await client.attend(
            ref, layer: 0, queries: Array(repeating: 0, count: 7), withSelection: false)
        }
        #expect(wrong?.code == .invalidArgument)
        let missing = await refusal { _ = try await client.release(SequenceRef(sequence: 77)) }
        #expect(missing?.code == .unknownSequence)
      }
    }
  }
}

/// Token-major K or V of a replayed layer's whole prefill.
func replayRows(_ replay: WorkloadReplay, _ layer: Int, keys: Bool) -> [Float16] {
  let trace = replay.layers[layer]
  let d = replay.geometry.headDim
  let heads = trace.heads.count
  let n = trace.heads[0].keys.rows
  var out = [Float16](repeating: 0, count: n * heads * d)
  for (h, head) in trace.heads.enumerated() {
    let m = keys ? head.keys : head.values
    for t in 0..<n { for c in 0..<d { out[(t * heads + h) * d + c] = m.storage[t * d + c] } }
  }
  return out
}
