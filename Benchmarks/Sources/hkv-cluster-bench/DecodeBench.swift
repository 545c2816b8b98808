import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVWorker

/// One layer's decode step at `tokens` of context: HeteroKV (HCAttention policy, PQ codes at
/// 6.25% of fp16 K+V, values on two in-process memory nodes) against full fp16 attention over
/// the same K/V on the same machine.
struct DecodeBench {
  let tokens: Int
  let steps: Int
  /// `pq` (one-byte codes, 256 centroids, over `--group` dims), `pq4` (4-bit codes, 16
  /// centroids, scored by fast scan) or `scalar` (2-bit).
  var codec = "pq"
  /// Exact outputs: the memory nodes re-score the kept tokens with their fp16 keys.
  var exact = false
  /// Keep each step's whole tau-mass set instead of capping it at the budget's tokens.
  var uncapped = false
  /// One kept set per KV head (`kv_group`) or per query head (`query_head`).
  var selection = SelectionScope.kvGroup

  func run() async throws {
    let g = oneLayer
    let source = StreamingKV(
      kvHeads: g.kvHeads, groupSize: g.groupSize, headDim: g.headDim, seed: 7)
    let directions = (0..<g.kvHeads).map { source.direction(head: $0) }
    var options = LocalCluster.Options(model: g)
    options.capacityBytes = max(1 << 30, tokens * g.kvHeads * g.headDim * 4)
    options.budgets = BudgetSettings(policy: .hcattention, memoryFraction: 0.125)
    options.worker = WorkerSettings(
      keyCodec: codec == "scalar" ? .scalar : .pq,
      keyBits: codec == "scalar" ? 2 : codec == "pq4" ? 4 : 8,
      groupSize: Int(option("group") ?? "8") ?? 8, window: 64, sinks: 4, tau: 0.9,
      capSelection: !uncapped)  // capped: at most the budget's tokens, as measured in issue 5
    options.worker.selection = selection
    options.outputMode = exact ? .exact : .renormalized
    let cluster = try await LocalCluster.start(options, logger: logger)
    let worker = cluster.worker
    let ref = SequenceRef(sequence: UInt64(tokens))
    _ = try await worker.createSequence(ref, maxTokens: tokens + steps + 4)
    var keys = [HalfMatrix](repeating: HalfMatrix(cols: g.headDim), count: g.kvHeads)
    var values = keys
    let chunk = 16_384
    var start = 0
    let began = ContinuousClock.now
    while start < tokens {
      let range = start..<min(tokens, start + chunk)
      let (k, v) = source.interleaved(range: range, directions: directions)
      try await worker.append(ref, layer: 0, tokens: range.count, keys: k, values: v)
      for h in 0..<g.kvHeads {
        let (hk, hv) = source.rows(head: h, range: range, directions: directions)
        try keys[h].append(contentsOf: HalfMatrix(halves: hk, cols: g.headDim))
        try values[h].append(contentsOf: HalfMatrix(halves: hv, cols: g.headDim))
      }
      start = range.upperBound
    }
    try await worker.flush(ref)
    say(
      "\(tokens) tokens prefilled in \(String(format: "%.1f", (ContinuousClock.now - began).inSeconds)) s"
    )
    var heteroSeconds: [Double] = []
    var fullSeconds: [Double] = []
    var split = StepTimings()
    var errors: [Double] = []
    var kept = 0
    for t in 0..<(steps + 2) {
      let position = tokens + t
      let (k, v) = source.interleaved(range: position..<(position + 1), directions: directions)
      for h in 0..<g.kvHeads {
        let (hk, hv) = source.rows(
          head: h, range: position..<(position + 1), directions: directions)
        try keys[h].append(contentsOf: HalfMatrix(halves: hk, cols: g.headDim))
        try values[h].append(contentsOf: HalfMatrix(halves: hv, cols: g.headDim))
      }
      let q = source.queries(step: t, directions: directions)
      let clock = ContinuousClock.now
      try await worker.append(ref, layer: 0, tokens: 1, keys: k, values: v)
      let result = try await worker.attend(ref, layer: 0, queries: q, withSelection: true)
      let hetero = (ContinuousClock.now - clock).inSeconds
      let fullStart = ContinuousClock.now
      let d = g.headDim
      let group = g.groupSize
      let snapshotKeys = keys
      let snapshotValues = values
      let reference = try parallelMap(g.kvHeads) { h in
        try FullAttention.attend(
          queries: Array(q[(h * group * d)..<((h + 1) * group * d)]), heads: group,
          keys: snapshotKeys[h], values: snapshotValues[h]
        ).outputs
      }.flatMap { $0 }
      let full = (ContinuousClock.now - fullStart).inSeconds
      guard t >= 2 else { continue }  // warm-up
      heteroSeconds.append(hetero)
      fullSeconds.append(full)
      split += result.timings
      kept += (result.selections ?? []).reduce(0) { $0 + $1.count } / g.queryHeads
      for a in 0..<g.queryHeads {
        errors.append(
          Double(
            FidelityAccumulator.relativeL2(
              result.output[(a * d)..<((a + 1) * d)], reference[(a * d)..<((a + 1) * d)])))
      }
    }
    let stats = try await worker.stats(ref)
    try await worker.release(ref)
    await cluster.shutdown()
    func ms(_ x: Double) -> String { String(format: "%.1f ms", x * 1000) }
    let s = Double(steps)
    let hetero = heteroSeconds.sorted()[heteroSeconds.count / 2]
    let full = fullSeconds.sorted()[fullSeconds.count / 2]
    print(
      "| \(tokens) | \(String(format: "%.2f%%", 100 * Double(stats.workerBytes) / Double(stats.fullKVBytes))) "
        + "| \(ms(hetero)) | \(ms(split.compute / s)) | \(ms(split.plan / s)) | \(ms(split.fanOut / s)) "
        + "| \(ms(split.merge / s)) | \(ms(full)) | \(String(format: "%.2fx", full / hetero)) "
        + "| \(String(format: "%.4f", errors.reduce(0, +) / Double(errors.count))) "
        + "| \(kept / steps) |")
  }
}
