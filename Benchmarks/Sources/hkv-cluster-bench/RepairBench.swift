import Foundation
import HeteroKVConfig
import HeteroKVCoordinator
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVWorker

/// Repair after a memory node dies: one layer of Llama-3-8B geometry (exact outputs, so the
/// memory tier keeps fp16 keys and values) on three in-process memory nodes with replication
/// 2. Decodes, stops a node, keeps decoding while the worker copies every shard the node held
/// from its surviving replica, and reports the repair time and rate (beside the rate the
/// prefill was shipped at in the same run) and the step time before, during and after.
struct RepairBench {
  let tokens: Int
  let steps: Int

  func run() async throws {
    let g = oneLayer
    let source = StreamingKV(
      kvHeads: g.kvHeads, groupSize: g.groupSize, headDim: g.headDim, seed: 11)
    let directions = (0..<g.kvHeads).map { source.direction(head: $0) }
    var options = LocalCluster.Options(model: g)
    options.memoryNodes = 3
    options.replication = 2
    options.leaseSeconds = 1
    options.replicaCheckInterval = .milliseconds(100)
    options.chunkTokens = 16_384
    let maxTokens = tokens + 65_536
    options.capacityBytes = max(1 << 30, maxTokens * g.kvHeads * g.headDim * 4)
    options.budgets = BudgetSettings(policy: .hcattention, memoryFraction: 0.125)
    options.worker = WorkerSettings(
      keyCodec: .pq, keyBits: 8, groupSize: 8, window: 64, sinks: 4, tau: 0.9, capSelection: true)
    options.outputMode = .exact
    let cluster = try await LocalCluster.start(options, logger: logger)
    let worker = cluster.worker
    let ref = SequenceRef(sequence: 1)
    let key = SequenceKey(namespace: 0, sequence: 1)
    _ = try await worker.createSequence(ref, maxTokens: maxTokens)
    let chunk = 16_384
    var start = 0
    let began = ContinuousClock.now
    while start < tokens {
      let range = start..<min(tokens, start + chunk)
      let (k, v) = source.interleaved(range: range, directions: directions)
      try await worker.append(ref, layer: 0, tokens: range.count, keys: k, values: v)
      start = range.upperBound
    }
    try await worker.flush(ref)
    let prefill = (ContinuousClock.now - began).inSeconds
    let stored = try await worker.stats(ref).memoryTierBytes
    say(
      "\(tokens) tokens prefilled in \(String(format: "%.1f", prefill)) s, "
        + "\(ByteSize.format(UInt64(stored))) on the memory tier (2 copies)")
    var position = tokens
    func step() async throws -> Double {
      let (k, v) = source.interleaved(range: position..<(position + 1), directions: directions)
      let q = source.queries(step: position - tokens, directions: directions)
      let clock = ContinuousClock.now
      try await worker.append(ref, layer: 0, tokens: 1, keys: k, values: v)
      _ = try await worker.attend(ref, layer: 0, queries: q)
      position += 1
      return (ContinuousClock.now - clock).inSeconds
    }
    func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
    var before: [Double] = []
    for t in 0..<(steps + 2) {
      let s = try await step()
      if t >= 2 { before.append(s) }
    }
    // The node that dies: mem-0 (it holds about 2/3 of the shard copies).
    let held = cluster.nodes[0].node.store.stats().usedBytes
    let stopped = ContinuousClock.now
    await cluster.stopMemoryNode("mem-0")
    var during: [Double] = []
    var repairSeconds = 0.0
    var copied: UInt64 = 0
    while position < maxTokens - steps - 1 {
      during.append(try await step())
      // The engine's own work between steps (a model's other layers), during which repair runs.
      try await Task.sleep(for: .milliseconds(5))
      let status = try await cluster.coordinator.status()
      if let record = status.sequences.first(where: { $0.key == key }),
        let copies = status.copies[key], record.placement.version > 1,
        copies.placementVersion == record.placement.version, copies.underReplicatedShards == 0
      {
        repairSeconds = (ContinuousClock.now - stopped).inSeconds
        copied = copies.bytesCopied
        break
      }
      guard (ContinuousClock.now - stopped).inSeconds < 600 else {
        say("not repaired within 600 s")
        break
      }
    }
    var after: [Double] = []
    for _ in 0..<steps { after.append(try await step()) }
    try await worker.release(ref)
    await cluster.shutdown()
    func ms(_ x: Double) -> String { String(format: "%.1f ms", x * 1000) }
    let shipRate = Double(stored) / prefill
    let repairRate = Double(copied) / repairSeconds
    print("| tokens | node held | copied | repair time | repair rate | prefill ship rate | repair / ship | step before | step during repair (median, max) | step after | during / before |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
      "| \(tokens) | \(ByteSize.format(held)) | \(ByteSize.format(copied)) "
        + "| \(String(format: "%.1f s", repairSeconds)) "
        + "| \(String(format: "%.2f GB/s", repairRate / 1e9)) "
        + "| \(String(format: "%.2f GB/s", shipRate / 1e9)) "
        + "| \(String(format: "%.2f", repairRate / shipRate)) "
        + "| \(ms(median(before))) | \(ms(median(during))), \(ms(during.max() ?? 0)) "
        + "| \(ms(median(after))) | \(String(format: "%.2fx", median(during) / median(before))) |")
  }
}
