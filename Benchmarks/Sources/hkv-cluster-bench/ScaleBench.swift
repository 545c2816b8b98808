import BenchSupport
import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVWire
import HeteroKVWorker

/// One layer of Llama-3-8B geometry with a multi-million-token context: a coordinator and
/// `memoryNodes` memory nodes as `hkv` child processes hold the values; this process is the
/// worker, with 4-bit scalar key codes. Each decode step is checked against full attention
/// computed chunk by chunk over the regenerated context.
struct ScaleBench {
  let hkv: String
  let tokens: Int
  let memoryNodes: Int
  let steps: Int

  func run() async throws {
    let g = oneLayer
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
      "hkv-scale-\(getpid())")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    // Values only (HCAttention keeps keys as codes), spread over the nodes, with room to spare.
    let perNode = tokens * g.kvHeads * g.headDim * 4 / memoryNodes + (1 << 30)
    var yaml = """
      cluster: scale
      model: {name: \(g.name), layers: 1, query_heads: 32, kv_heads: 8, head_dim: 128}
      coordinator: {control: 127.0.0.1:7600, state_dir: \(directory.path)/coordinator, lease: 10s, heartbeat: 2s}
      worker: {key_codec: scalar, key_bits: 4, group_size: 4, window: 64, sinks: 4, tau: 0.9}
      budgets: {policy: hcattention, memory_fraction: 0.125}
      replication: 1
      memory_nodes:

      """
    for i in 0..<memoryNodes {
      yaml +=
        "  - {id: mem-\(i), data: 127.0.0.1:\(7610 + 2 * i), control: 127.0.0.1:\(7611 + 2 * i), capacity: \(perNode)}\n"
    }
    let file = directory.appendingPathComponent("scale.yaml").path
    try yaml.write(toFile: file, atomically: true, encoding: .utf8)
    var children: [(String, Process)] = []
    defer {
      for (_, child) in children where child.isRunning {
        child.terminate()
        child.waitUntilExit()
      }
    }
    func spawn(_ name: String, _ args: [String]) throws {
      let p = Process.tiedToParent(
        URL(fileURLWithPath: hkv), args + ["--config", file, "--log-level", "error"])
      let out = Pipe()
      p.standardOutput = out
      try p.runWithDefaultSignalMask()
      children.append((name, p))
      var seen = Data()
      while !String(decoding: seen, as: UTF8.self).contains("ready ") {
        let chunk = out.fileHandleForReading.availableData
        if chunk.isEmpty { throw HeteroKVError(.unavailable, "\(name) exited before ready") }
        seen += chunk
      }
    }
    try spawn("coordinator", ["coordinator"])
    for i in 0..<memoryNodes { try spawn("mem-\(i)", ["memnode", "--id", "mem-\(i)"]) }
    let cluster = try ClusterConfiguration.load(path: file)
    var options = try WorkerOptions(cluster: cluster, id: "scale-worker")
    options.chunkTokens = 256 << 10
    let worker = try Worker(
      options: options, control: CoordinatorControl(address: cluster.coordinator!.control))
    let ref = SequenceRef(sequence: 1)
    // Memory nodes register within a heartbeat; retry the open until they are all up.
    var opened = false
    for _ in 0..<50 where !opened {
      do {
        let info = try await worker.createSequence(ref, maxTokens: tokens + steps + 4)
        opened = info.placement.nodes.count == memoryNodes
        if !opened { try await worker.release(ref) }
      } catch {}
      if !opened { try await Task.sleep(for: .milliseconds(200)) }
    }
    guard opened else { throw HeteroKVError(.unavailable, "the memory nodes did not all register") }
    let source = StreamingKV(
      kvHeads: g.kvHeads, groupSize: g.groupSize, headDim: g.headDim, seed: 11)
    let directions = (0..<g.kvHeads).map { source.direction(head: $0) }
    let began = ContinuousClock.now
    let chunk = 32_768
    var start = 0
    while start < tokens {
      let range = start..<min(tokens, start + chunk)
      let (k, v) = source.interleaved(range: range, directions: directions)
      try await worker.append(ref, layer: 0, tokens: range.count, keys: k, values: v)
      start = range.upperBound
      if start % (512 << 10) == 0 {
        say(
          "prefill \(start)/\(tokens) tokens, \(String(format: "%.0f", (ContinuousClock.now - began).inSeconds)) s"
        )
      }
    }
    try await worker.flush(ref)
    let prefill = (ContinuousClock.now - began).inSeconds
    // Decode: each step appends its token, then attends.
    var outputs: [[Float]] = []
    var queries: [[Float]] = []
    var latencies: [Double] = []
    var split = StepTimings()
    for t in 0..<steps {
      let position = tokens + t
      let (k, v) = source.interleaved(range: position..<(position + 1), directions: directions)
      let q = source.queries(step: t, directions: directions)
      let clock = ContinuousClock.now
      try await worker.append(ref, layer: 0, tokens: 1, keys: k, values: v)
      let result = try await worker.attend(ref, layer: 0, queries: q)
      latencies.append((ContinuousClock.now - clock).inSeconds)
      split += result.timings
      outputs.append(result.output)
      queries.append(q)
    }
    let stats = try await worker.stats(ref)
    var memory: [(String, String)] = [("worker (this process)", residentMemory(getpid()))]
    for (name, child) in children { memory.append((name, residentMemory(child.processIdentifier))) }
    // The reference: full attention of every step's queries over the regenerated context, in
    // chunks merged exactly, then the decode tokens each step could see.
    let d = g.headDim
    let group = g.groupSize
    var partials = [[AttentionPartial]](repeating: [], count: steps)
    let refBegan = ContinuousClock.now
    let stepQueries = queries
    start = 0
    while start < tokens + steps {
      let range = start..<min(tokens + steps, start + 65_536)
      let heads = try parallelMap(g.kvHeads) { h -> [AttentionPartial] in
        let (hk, hv) = source.rows(head: h, range: range, directions: directions)
        let keys = try HalfMatrix(halves: hk, cols: d)
        let values = try HalfMatrix(halves: hv, cols: d)
        return try (0..<steps).map { t in
          // Step t sees tokens < tokens + t + 1.
          let visible = min(range.count, max(0, tokens + t + 1 - range.lowerBound))
          guard visible > 0 else { return AttentionPartial.empty(heads: group, headDim: d) }
          let rows = Array(0..<visible)
          return try FullAttention.attend(
            queries: Array(stepQueries[t][(h * group * d)..<((h + 1) * group * d)]), heads: group,
            keys: visible == range.count ? keys : keys.gather(rows),
            values: visible == range.count ? values : values.gather(rows))
        }
      }
      for t in 0..<steps {
        // One partial per step covering all heads: concatenate heads in order.
        var joined = AttentionPartial.empty(heads: g.queryHeads, headDim: d)
        for h in 0..<g.kvHeads {
          let p = heads[h][t]
          joined.outputs.replaceSubrange((h * group * d)..<((h + 1) * group * d), with: p.outputs)
          joined.maxScores.replaceSubrange((h * group)..<((h + 1) * group), with: p.maxScores)
          joined.sumExps.replaceSubrange((h * group)..<((h + 1) * group), with: p.sumExps)
        }
        partials[t].append(joined)
      }
      start = range.upperBound
    }
    var errors: [Double] = []
    for t in 0..<steps {
      let reference = try AttentionPartial.merge(partials[t]).outputs
      for a in 0..<g.queryHeads {
        errors.append(
          Double(
            FidelityAccumulator.relativeL2(
              outputs[t][(a * d)..<((a + 1) * d)], reference[(a * d)..<((a + 1) * d)])))
      }
    }
    let refSeconds = (ContinuousClock.now - refBegan).inSeconds
    try await worker.release(ref)
    await worker.shutdown()
    func ms(_ x: Double) -> String { String(format: "%.0f ms", x * 1000) }
    let s = Double(steps)
    print(
      "context: \(tokens) tokens x 8 KV heads x 128 (one layer), \(memoryNodes) memory node processes"
    )
    print(
      "fp16 K/V of the layer: \(ByteSize.format(stats.fullKVBytes)); worker: \(ByteSize.format(stats.workerBytes)) (\(String(format: "%.2f%%", 100 * Double(stats.workerBytes) / Double(stats.fullKVBytes)))); memory tier: \(ByteSize.format(stats.memoryTierBytes))"
    )
    print(
      "prefill: \(String(format: "%.1f", prefill)) s (\(String(format: "%.0f", Double(tokens) / prefill)) tokens/s)"
    )
    print(
      "decode step: median \(ms(latencies.sorted()[latencies.count / 2])); mean split compute \(ms(split.compute / s)), plan \(ms(split.plan / s)), fan-out \(ms(split.fanOut / s)), merge \(ms(split.merge / s))"
    )
    print(
      "error against full attention (chunked, \(String(format: "%.0f", refSeconds)) s): mean \(String(format: "%.4f", errors.reduce(0, +) / Double(errors.count))), max \(String(format: "%.4f", errors.max() ?? 0)) over \(steps) steps x 32 query heads"
    )
    print("resident memory after decode:")
    for (name, rss) in memory { print("  \(name): \(rss)") }
  }
}

/// VmRSS and VmHWM (peak) of a process, from /proc.
func residentMemory(_ pid: Int32) -> String {
  guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else {
    return "?"
  }
  func field(_ name: String) -> String {
    status.split(separator: "\n").first { $0.hasPrefix(name) }.map {
      $0.dropFirst(name.count).trimmingCharacters(in: .whitespaces)
    } ?? "?"
  }
  return "rss \(field("VmRSS:")), peak \(field("VmHWM:"))"
}
