import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVTestSupport
import HeteroKVWorker
import MetricsTestKit
import Testing

@Suite("Worker metrics and release", .serialized)
struct WorkerMetricsTests {
  @Test(
    "the worker's metrics count what its steps kept and moved, its open sequences and resident bytes; stats agree"
  )
  func stepFigures() async throws {
    let metrics = TestMetrics()
    let replay = try tinyWorkload(steps: 4)
    var options = fullBudgetOptions(policy: .hcattention)
    options.budgets.memoryFraction = 0.125
    options.worker.tau = 0.9
    let cluster = try await LocalCluster.start(
      options, logger: quietLogger, metricsFactory: metrics)
    let worker = ["worker", "worker-0"]
    func gauge(_ label: String) throws -> Double? {
      try metrics.expectGauge(label, [(worker[0], worker[1])]).lastValue
    }
    func counter(_ label: String) throws -> Int64 {
      try metrics.expectCounter(label, [(worker[0], worker[1])]).totalValue
    }
    do {
      let ref = SequenceRef(sequence: 7)
      _ = try await cluster.worker.createSequence(ref, maxTokens: 4096)
      #expect(try gauge("hkv_worker_open_sequences") == 1)
      try await replay.prefill(cluster.worker, ref)
      let report = try await replay.decode(cluster.worker, ref)
      let stats = try await cluster.worker.stats(ref)
      let g = tinyModel
      // Every layer of every step counted, with its context.
      #expect(stats.decodeSteps == 4)
      #expect(
        stats.contextTokens
          == (0..<4).reduce(0) { $0 + (replay.contextLength + $1 + 1) * g.queryHeads } * g.layers)
      #expect(stats.keptTokens > 0 && stats.keptTokens < stats.contextTokens)
      #expect(stats.keptShare > 0.01 && stats.keptShare < 0.9, "\(stats.keptShare)")
      #expect(try counter("hkv_worker_kept_tokens_total") == Int64(stats.keptTokens))
      #expect(try counter("hkv_worker_context_tokens_total") == Int64(stats.contextTokens))
      let attends = try metrics.expectTimer(
        "hkv_worker_attend_duration_seconds",
        [
          (worker[0], worker[1])
        ])
      #expect(attends.values.count == 4 * g.layers)
      let moved = try metrics.expectRecorder(
        "hkv_worker_step_bytes", [(worker[0], worker[1]), ("tier", "memory_nodes")])
      #expect(moved.values.reduce(0, +) == Double(report.bytesMoved))
      #expect(stats.decodeBytesMoved >= report.bytesMoved)
      #expect(try gauge("hkv_worker_resident_bytes")! > 0)
      #expect(stats.underReplicatedShards == 0)
      try await cluster.worker.release(ref)
      #expect(try gauge("hkv_worker_open_sequences") == 0)
      #expect(try gauge("hkv_worker_resident_bytes") == 0)
      await cluster.shutdown()
    } catch {
      await cluster.shutdown()
      throw error
    }
  }

  @Test(
    "a release after a replicated node died succeeds, names the node and counts it; the reservation is freed"
  )
  func releaseAfterNodeDeath() async throws {
    let metrics = TestMetrics()
    // More steps than a decode put batches (32 rows), so decode rows are shipped.
    let replay = try tinyWorkload(steps: 34)
    var options = fullBudgetOptions(policy: .hcattention, replication: 2)
    options.memoryNodes = 3
    let cluster = try await LocalCluster.start(
      options, logger: quietLogger, metricsFactory: metrics)
    do {
      let ref = SequenceRef(sequence: 11)
      let info = try await cluster.worker.createSequence(ref, maxTokens: 4096)
      try await replay.prefill(cluster.worker, ref)
      try await cluster.worker.flush(ref)
      let victim = try #require(info.placement.nodes.first).endpoint.id
      await cluster.stopMemoryNode(victim)
      _ = try await replay.decode(cluster.worker, ref, measure: false)
      // Decode rows went to one replica of each shard the dead node held.
      #expect(try await cluster.worker.stats(ref).underReplicatedShards > 0)
      let outcome = try await cluster.worker.releaseDetailed(ref)
      #expect(outcome.unreachableNodes == [victim])
      #expect(
        try metrics.expectCounter(
          "hkv_worker_release_unreachable_nodes_total", [("worker", "worker-0")]
        ).totalValue == 1)
      #expect(
        try metrics.expectGauge("hkv_worker_under_replicated_shards", [("worker", "worker-0")])
          .lastValue == 0)
      // The coordinator no longer holds the sequence, and the worker refuses it.
      #expect(await cluster.coordinator.snapshot().sequences.isEmpty)
      await #expect(throws: HeteroKVError.self) { _ = try await cluster.worker.stats(ref) }
      await cluster.shutdown()
    } catch {
      await cluster.shutdown()
      throw error
    }
  }
}
