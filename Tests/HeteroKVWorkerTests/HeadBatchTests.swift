import Testing

@testable import HeteroKVWorker

@Suite("How many heads a decode step scores at once")
struct HeadBatchTests {
  @Test("before any step is measured, a head's (token, query head) pairs decide")
  func unmeasured() {
    // SmolLM2 at 8K: 8,000 tokens x 3 query heads.
    #expect(SequenceSession.headBatch(tokens: 8_000, queryHeads: 3, measured: nil) == 1)
    // Llama-3-8B at 128K: 131,072 tokens x 4 query heads.
    #expect(
      SequenceSession.headBatch(tokens: 131_072, queryHeads: 4, measured: nil)
        == SequenceSession.cores)
  }

  @Test("once measured, a head's compute time decides, whatever the context's length")
  func measured() {
    let worth = SequenceSession.headWorthACore
    #expect(
      SequenceSession.headBatch(tokens: 8_000, queryHeads: 3, measured: worth * 2)
        == SequenceSession.cores)
    #expect(SequenceSession.headBatch(tokens: 131_072, queryHeads: 4, measured: worth / 2) == 1)
    #expect(
      SequenceSession.headBatch(tokens: 8_000, queryHeads: 3, measured: worth)
        == SequenceSession.cores)
  }
}
