import HeteroKVConfig
import HeteroKVCore
import HeteroKVEval
import HeteroKVLocalCluster
import HeteroKVWorker
import Testing

@Suite("The harness measures what the worker holds", .serialized)
struct HarnessAgreementTests {
  /// Decodes `replay` on a cluster of `options`: the worker's share of fp16 K/V once its rows
  /// are flushed, and its mean relative output error.
  func decode(_ replay: WorkloadReplay, on options: LocalCluster.Options) async throws -> (
    share: Double, error: Double, kept: Double
  ) {
    try await withCluster(options) { cluster in
      let ref = SequenceRef(sequence: 4)
      _ = try await cluster.worker.createSequence(ref, maxTokens: 4096)
      try await replay.prefill(cluster.worker, ref)
      let report = try await replay.decode(cluster.worker, ref)
      try await cluster.worker.flush(ref)
      let stats = try await cluster.worker.stats(ref)
      try await cluster.worker.release(ref)
      return (
        Double(stats.workerBytes) / Double(stats.fullKVBytes), report.meanRelativeError,
        stats.keptShare
      )
    }
  }

  /// An hcattention cluster on the recommended settings at `budget`, exact output, finer
  /// codes as asked.
  func hcattention(budget: Double, finer: Bool) -> LocalCluster.Options {
    var options = fullBudgetOptions(policy: .hcattention)
    options.budgets.memoryFraction = budget
    options.worker = RecommendedSettings.worker
    options.worker.finerCodes = finer
    options.outputMode = .exact
    return options
  }

  @Test(
    "on the same trace, the harness's HCAttention on the worker's key index holds the worker's share of fp16 K/V and errs like it, with finer codes or without",
    arguments: [false, true])
  func residentShareAgrees(finer: Bool) async throws {
    let replay = try tinyWorkload(tokens: 2048, steps: 4)
    // At 2K tokens 12.5% leaves too little over the codes to buy finer ones: 20% does.
    let budget = finer ? 0.2 : 0.125
    let options = hcattention(budget: budget, finer: finer)
    let worker = try await decode(replay, on: options)
    var eval = try EvalOptions(policies: ["hcattention-exact"], budgets: [budget])
    eval.keyIndex = options.worker.keyIndex
    eval.tau = Float(options.worker.tau(for: .hcattention))
    eval.estimatesUnkept = options.worker.unkeptEstimate
    eval.selection = options.worker.selection
    eval.finerCodes = finer
    let row = try #require(EvalHarness.run(replay.workload, options: eval).rows.first)
    let harness = try #require(row.residentFraction)
    #expect(
      abs(harness - worker.share) / worker.share < 0.03,
      "harness \(harness), worker \(worker.share)")
    // The worker's index: one-byte codes (6.25%), a 64-centroid codebook, 68 exact keys; finer
    // codes spend what the budget leaves on some heads, and stay inside it.
    let coarse = options.worker.keyCodeShare(headDim: tinyModel.headDim, tokens: 2052)
    if finer {
      #expect(harness > coarse + 0.02 && harness <= budget, "harness \(harness), coarse \(coarse)")
    } else {
      #expect(abs(harness - coarse) / coarse < 0.03, "harness \(harness), formula \(coarse)")
    }
    // Both run the same codes at the same tau; each group attends its union on both.
    let error = try #require(row.relativeL2Error)
    #expect(error < 0.05 && worker.error < 0.05, "harness \(error), worker \(worker.error)")
    #expect(abs(error - worker.error) < 0.5 * max(error, worker.error) + 0.002)
  }

  @Test(
    "one kept set per KV head attends fewer tokens than the union of the query heads' sets at the same tau, on the worker and in the harness alike"
  )
  func groupSelectionOnBoth() async throws {
    let replay = try tinyWorkload(tokens: 2048, steps: 4)
    func run(_ scope: SelectionScope) async throws -> (worker: Double, harness: Double) {
      var options = hcattention(budget: 0.125, finer: false)
      options.worker.tau = 0.95
      options.worker.selection = scope
      let worker = try await decode(replay, on: options)
      var eval = try EvalOptions(policies: ["hcattention-exact"], budgets: [0.125])
      eval.keyIndex = options.worker.keyIndex
      eval.tau = 0.95
      eval.estimatesUnkept = options.worker.unkeptEstimate
      eval.selection = scope
      let row = try #require(EvalHarness.run(replay.workload, options: eval).rows.first)
      #expect(worker.error < 0.1, "\(scope): worker error \(worker.error)")
      return (worker.kept, try #require(row.keptFraction))
    }
    let union = try await run(.queryHead)
    let group = try await run(.kvGroup)
    #expect(group.worker < 0.95 * union.worker, "group \(group.worker), union \(union.worker)")
    #expect(group.harness < 0.95 * union.harness, "group \(group.harness), union \(union.harness)")
    for (scope, kept) in [("query_head", union), ("kv_group", group)] {
      #expect(
        abs(kept.worker - kept.harness) < 0.1 * kept.worker,
        "\(scope): worker kept \(kept.worker), harness \(kept.harness)")
    }
  }

  @Test(
    "the harness's HeteroCache on the worker's index: recall lowers the error inside the budget")
  func heteroCacheRecallInTheHarness() throws {
    let replay = try tinyWorkload(tokens: 2048, steps: 4)
    func row(recall: Bool) throws -> EvalRow {
      var eval = try EvalOptions(policies: ["heterocache"], budgets: [0.25])
      eval.keyIndex = RecommendedSettings.worker.keyIndex
      eval.tau = Float(RecommendedSettings.worker.tau(for: .heterocache))
      eval.heteroCacheRecall = recall
      return try #require(EvalHarness.run(replay.workload, options: eval).rows.first)
    }
    let recalled = try row(recall: true)
    let fixed = try row(recall: false)
    let e1 = try #require(recalled.relativeL2Error)
    let e0 = try #require(fixed.relativeL2Error)
    #expect(e1 < e0, "recall \(e1), static \(e0)")
    #expect(try #require(recalled.residentFraction) <= 0.25 + 0.01)
    #expect(try #require(fixed.residentFraction) <= 0.25 + 0.01)
  }

  @Test(
    "the unkept estimate lowers the error of the worker and of the harness alike, at the same kept share"
  )
  func unkeptEstimateOnBoth() async throws {
    let replay = try tinyWorkload(tokens: 2048, steps: 4)
    func run(estimate: Bool) async throws -> (worker: Double, harness: Double) {
      var options = hcattention(budget: 0.125, finer: false)
      options.worker.tau = 0.8  // a tail worth estimating
      options.worker.unkeptEstimate = estimate
      let worker = try await decode(replay, on: options)
      var eval = try EvalOptions(policies: ["hcattention-exact"], budgets: [0.125])
      eval.keyIndex = options.worker.keyIndex
      eval.tau = 0.8
      eval.estimatesUnkept = estimate
      eval.selection = options.worker.selection
      let row = try #require(EvalHarness.run(replay.workload, options: eval).rows.first)
      return (worker.error, try #require(row.relativeL2Error))
    }
    let off = try await run(estimate: false)
    let on = try await run(estimate: true)
    #expect(on.worker < 0.8 * off.worker, "worker: \(on.worker) with, \(off.worker) without")
    #expect(on.harness < 0.8 * off.harness, "harness: \(on.harness) with, \(off.harness) without")
    #expect(
      abs(on.worker - on.harness) < 0.25 * off.worker, "worker \(on.worker), harness \(on.harness)")
  }

  @Test(
    "hcattention spends what its budget leaves over the codes on finer codes: more bytes, still inside the budget, lower error"
  )
  func finerCodesFillTheBudget() async throws {
    let replay = try tinyWorkload(tokens: 2048, steps: 4)
    func run(finer: Bool) async throws -> (share: Double, error: Double, kept: Double) {
      try await decode(replay, on: hcattention(budget: 0.2, finer: finer))
    }
    let coarse = try await run(finer: false)
    let fine = try await run(finer: true)
    #expect(fine.share > coarse.share + 0.02, "finer \(fine.share), coarse \(coarse.share)")
    #expect(fine.share <= 0.2, "finer codes hold \(fine.share) of fp16 K/V at a 0.2 budget")
    #expect(fine.error < coarse.error, "finer \(fine.error), coarse \(coarse.error)")
  }
}
