import Dispatch
import Foundation
import HeteroKVCore

// Kernel benchmarks, measured against this machine's memory read bandwidth in the same run.
// Every figure is the best of `repeats` runs; ratios are what to compare across machines.

let args = CommandLine.arguments
let quick = args.contains("--quick")
let repeats = quick ? 2 : 5

func seconds(_ body: () -> Void) -> Double {
  var best = Double.infinity
  for _ in 0..<repeats {
    let start = DispatchTime.now().uptimeNanoseconds
    body()
    best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
  }
  return best
}

if args.contains("dataplane") {
  let semaphore = DispatchSemaphore(value: 0)
  Task.detached {
    do {
      try await DataPlaneBenchmark(quick: quick).run()
    } catch {
      print("error: \(error)")
    }
    semaphore.signal()
  }
  semaphore.wait()
  exit(0)
}

if args.contains("--breakdown") {
  try breakdownFullAttention()
  try breakdownHCAttention()
  exit(0)
}

func gbps(_ bytes: Int, _ s: Double) -> String {
  String(format: "%.2f GB/s", Double(bytes) / s / 1e9)
}
func ms(_ s: Double) -> String { String(format: "%.2f ms", s * 1000) }

print("# HeteroKV kernel benchmarks")
print("vectorized kernels (AVX2+FMA+F16C): \(Kernels.isVectorized)")

// 1. Memory read bandwidth: sum a 1 GiB array, one thread.
let scanCount = (quick ? 256 : 1024) << 18
let big = [Float](repeating: 1, count: scanCount)
var sink: Double = 0
let scanTime = seconds { sink += Kernels.scanSum(big) }
let bandwidth = Double(scanCount * 4) / scanTime
print(
  "\n## Memory read bandwidth (scan of \((scanCount * 4) >> 20) MiB, 1 thread): \(gbps(scanCount * 4, scanTime))"
)
// Two threads, each scanning half: the reference for the two-thread scoring rows.
let halves = [Array(big[0..<scanCount / 2]), Array(big[scanCount / 2..<scanCount])]
let scanTime2 = seconds {
  sink += try! parallelMap(2) { Kernels.scanSum(halves[$0]) }.reduce(0, +)
}
let bandwidth2 = Double(scanCount * 4) / scanTime2
print("Memory read bandwidth, 2 threads: \(gbps(scanCount * 4, scanTime2))")

// 2. Scoring from codes: 128K tokens x 8 KV heads x dim 128, 4 query heads per KV head.
let tokens = quick ? 32768 : 131072
let kvHeads = 8
let d = 128
let group = 4
var rng = SeededGenerator(seed: 7)
let queries = (0..<group * d).map { _ in rng.gaussian() }
print(
  "\n## Scoring from codes: \(tokens) tokens x \(kvHeads) KV heads x dim \(d), \(group) query heads each, 1 thread"
)
print("| codec | code bytes | time | effective read | share of scan bandwidth |")
print("|---|---|---|---|---|")
func share(_ bytes: Int, _ t: Double, _ reference: Double) -> String {
  String(format: "%.2f", Double(bytes) / t / reference)
}
// (sub-spaces, centroids): one-byte and two-byte codes scored from a float table, and 4-bit
// codes (16 centroids) by fast scan: over 2 dims (the bytes of c=256 over 4) and over 4.
for (g, centroids) in [(32, 256), (32, 1024), (32, 4096), (64, 16), (32, 16)] {
  // Random codebook and codes: scoring speed does not depend on the values, and random codes
  // are the worst case for the lookup table's cache.
  let book = try ProductCodebook(
    version: CodebookVersion(
      geometry: "bench", layer: 0, kvHead: 0, headDim: d, subvectors: g, centroids: centroids,
      calibration: .calibrationSet("random")),
    centroids: Kernels.toHalf((0..<centroids * d).map { _ in rng.gaussian() }))
  let stores = (0..<kvHeads).map { _ in
    try! ProductQuantizedKeyStore(
      codebook: book, codes: (0..<tokens * g).map { _ in UInt16(rng.next() % UInt64(centroids)) })
  }
  let t = seconds {
    for s in stores { sink += Double(try! s.scores(queries: queries, heads: group, scale: 0.1)[7]) }
  }
  // The codes as stored (a calibration-set codebook is not charged to the store).
  let bytes = stores.reduce(0) { $0 + $1.residentBytes }
  let name =
    centroids <= 16 ? "PQ 4-bit fast scan g=\(g) c=\(centroids)" : "PQ g=\(g) c=\(centroids)"
  print(
    "| \(name) | \((bytes) >> 20) MiB | \(ms(t)) | \(gbps(bytes, t)) | \(share(bytes, t, bandwidth)) |"
  )
  if centroids <= 16 {
    // Both cores, four heads each.
    let t2 = seconds {
      sink += try! parallelMap(2) { half in
        (0..<kvHeads / 2).reduce(0.0) { acc, k in
          acc
            + Double(
              try! stores[half * kvHeads / 2 + k].scores(
                queries: queries, heads: group, scale: 0.1)[7])
        }
      }.reduce(0, +)
    }
    print(
      "| \(name), 2 threads | \((bytes) >> 20) MiB | \(ms(t2)) | \(gbps(bytes, t2)) | \(share(bytes, t2, bandwidth2)) of the 2-thread scan |"
    )
  }
}
do {
  let config = try ScalarQuantizerConfiguration(bits: 4, groupSize: 64, window: 0)
  let keys = try HalfMatrix((0..<tokens * d).map { _ in rng.gaussian() }, cols: d)
  var store = try ScalarQuantizedKeyStore(headDim: d, configuration: config)
  try store.append(keys)
  let t = seconds {
    for _ in 0..<kvHeads {
      sink += Double(try! store.scores(queries: queries, heads: group, scale: 0.1)[7])
    }
  }
  let bytes = kvHeads * store.residentBytes
  print(
    "| scalar 4-bit, group 64 | \((bytes) >> 20) MiB | \(ms(t)) | \(gbps(bytes, t)) | \(String(format: "%.2f", Double(bytes) / t / bandwidth)) |"
  )
  let fp16 = kvHeads * keys.byteCount
  let tf = seconds {
    for _ in 0..<kvHeads {
      sink += Double(Kernels.scores(queries: queries, heads: group, keys: keys, scale: 0.1)[7])
    }
  }
  print(
    "| fp16 keys (reference) | \((fp16) >> 20) MiB | \(ms(tf)) | \(gbps(fp16, tf)) | \(String(format: "%.2f", Double(fp16) / tf / bandwidth)) |"
  )
}

// 3. One decode step of one layer (8 KV heads): HCAttention at 12.5% vs full fp16 attention.
// The speed-up depends on how many tokens the tau-mass prefix keeps, so it is measured on the
// default head mix and on a mix of only the sharply focused kinds.
print("\n## One decode step, one layer (8 KV heads x 4 query heads, dim 128)")
print(
  "| head mix | context | threads | full fp16 attention | HCAttention 12.5% (PQ g=32, c=1024, tau 0.9) | speed-up | kept tokens |"
)
print("|---|---|---|---|---|---|---|")
let mixes: [(String, [SyntheticHeadKind]?)] = [
  ("default", nil), ("sink-local + heavy-hitter", [.sinkLocal, .heavyHitter]),
]
for (mixName, mix) in mixes {
  for context in quick ? [32768] : [32768, 131072] {
    var config = SyntheticWorkloadConfiguration(geometry: .llama3_8B)
    config.layers = 1
    config.contextLength = context
    config.decodeSteps = 1
    if let mix { config.headMix = mix }
    let layer = try SyntheticWorkload(config).layer(0)
    let stepper = try HCAttentionStep(tau: 0.9, mode: .renormalized)
    let stores = try parallelMap(kvHeads) { h in
      // Codebook from a calibration sample of the head's keys, then the whole context coded.
      let sample = layer.heads[h].keys.gather(
        Array(stride(from: 0, to: context, by: context / 8192)))
      let version = CodebookVersion(
        geometry: "llama-3-8b", layer: 0, kvHead: h, headDim: d, subvectors: 32, centroids: 1024,
        calibration: .calibrationSet("prefill sample"))
      let book = try ProductCodebook.train(
        keys: sample,
        configuration: try ProductQuantizerConfiguration(
          subvectors: 32, centroids: 1024, iterations: 4, batchSize: 4096),
        version: version)
      var store = ProductQuantizedKeyStore(codebook: book)
      try store.append(layer.heads[h].keys)
      return store
    }
    let scale = FullAttention.scale(headDim: d)
    let tFull = seconds {
      for head in layer.heads {
        sink += Double(
          try! FullAttention.attend(
            queries: head.decodeQueries[0], heads: group, keys: head.keys, values: head.values
          ).outputs[0])
      }
    }
    var kept = 0
    let tHC = seconds {
      kept = 0
      for (h, head) in layer.heads.enumerated() {
        let scores = try! stores[h].scores(
          queries: head.decodeQueries[0], heads: group, scale: scale)
        let selections = try! stepper.select(approximateScores: scores, heads: group)
        kept += selections.reduce(0) { $0 + $1.indices.count }
        sink += Double(
          try! stepper.contextVectors(
            selections: selections, queries: head.decodeQueries[0], keys: nil, values: head.values
          ).outputs[0])
      }
    }
    print(
      "| \(mixName) | \(context) | 1 | \(ms(tFull)) | \(ms(tHC)) | \(String(format: "%.2fx", tFull / tHC)) | \(String(format: "%.1f%%", Double(kept) / Double(context * kvHeads * group) * 100)) |"
    )
    // Both cores, heads spread over them, for both methods.
    let heads = layer.heads
    let tFull2 = seconds {
      sink += try! parallelMap(kvHeads) { h in
        Double(
          try FullAttention.attend(
            queries: heads[h].decodeQueries[0], heads: group, keys: heads[h].keys,
            values: heads[h].values
          ).outputs[0])
      }.reduce(0, +)
    }
    let tHC2 = seconds {
      sink += try! parallelMap(kvHeads) { h in
        let scores = try stores[h].scores(
          queries: heads[h].decodeQueries[0], heads: group, scale: scale)
        let selections = try stepper.select(approximateScores: scores, heads: group)
        return Double(
          try stepper.contextVectors(
            selections: selections, queries: heads[h].decodeQueries[0], keys: nil,
            values: heads[h].values
          ).outputs[0])
      }.reduce(0, +)
    }
    print(
      "| \(mixName) | \(context) | 2 | \(ms(tFull2)) | \(ms(tHC2)) | \(String(format: "%.2fx", tFull2 / tHC2)) | |"
    )
  }
}

// 4. Product-quantization encoding throughput (nearest centroid), the cost of a prefill.
print("\n## PQ encoding (nearest centroid over c centroids per sub-vector), 1 thread")
print("| g | c | keys/s | GFMA/s |")
print("|---|---|---|---|")
for (g, c) in [(32, 1024), (32, 4096), (64, 4096)] {
  let keys = try HalfMatrix((0..<8192 * d).map { _ in rng.gaussian() }, cols: d)
  let book = try ProductCodebook(
    version: CodebookVersion(
      geometry: "bench", layer: 0, kvHead: 0, headDim: d, subvectors: g, centroids: c,
      calibration: .calibrationSet("random")),
    centroids: Kernels.toHalf((0..<c * d).map { _ in rng.gaussian() }))
  let t = seconds { sink += Double(try! book.encode(keys)[3]) }
  print(
    "| \(g) | \(c) | \(String(format: "%.0f", 8192 / t)) | \(String(format: "%.1f", 8192.0 * Double(c * d) / t / 1e9)) |"
  )
}
if sink == 42 { print("") }
