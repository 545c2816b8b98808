// `hkv-bench --breakdown`: where one head's decode step spends its time, at 128K tokens.
import Dispatch
import Foundation
import HeteroKVCore
import CHeteroKVKernels

/// Prints the best of `repeats` runs of `body` in milliseconds.
func t(_ name: String, _ body: () -> Void) {
  print(name, String(format: "%.2f ms", seconds(body) * 1000))
}

func breakdownFullAttention() throws {
  let n = 131072, d = 128
  var rng = SeededGenerator(seed: 1)
  let keys = try HalfMatrix((0..<n * d).map { _ in rng.gaussian() }, cols: d)
  let values = try HalfMatrix((0..<n * d).map { _ in rng.gaussian() }, cols: d)
  let q = (0..<4 * d).map { _ in rng.gaussian() }
  var p = [Float]()
  t("scores") { p = Kernels.scores(queries: q, heads: 4, keys: keys, scale: 0.088) }
  var p2 = p
  t("softmax") {
    p2 = p; _ = Softmax.normalizeRows(&p2, heads: 4, n: n)
  }
  t("wsum") { _ = Kernels.weightedSum(values: values, probabilities: p2, heads: 4) }
  let small = try HalfMatrix((0..<4096 * d).map { _ in rng.gaussian() }, cols: d)
  t("scores in-cache x32 (same bytes)") {
    for _ in 0..<32 { p = Kernels.scores(queries: q, heads: 4, keys: small, scale: 0.088) }
  }
  var big = [Float](repeating: 1, count: n * d / 2)
  t("scan same bytes") { big[3] += Float(Kernels.scanSum(big)) }
  var out = [Float](repeating: 0, count: 4 * n)
  t("scores reused output") {
    keys.storage.withUnsafeBufferPointer { k in
      k.withMemoryRebound(to: UInt16.self) { k16 in
        hkv_scores_f16(q, 4, k16.baseAddress, n, d, 0.088, &out)
      }
    }
  }
  t("attend") { _ = try! FullAttention.attend(queries: q, heads: 4, keys: keys, values: values) }
}

func breakdownHCAttention() throws {
  let n = 131072, d = 128
  var config = SyntheticWorkloadConfiguration(geometry: .llama3_8B)
  config.layers = 1
  config.contextLength = n
  config.decodeSteps = 1
  config.headMix = [.retrieval]
  let head = try SyntheticWorkload(config).layer(0).heads[0]
  let sample = head.keys.gather(Array(stride(from: 0, to: n, by: 16)))
  let version = CodebookVersion(
    geometry: "x", layer: 0, kvHead: 0, headDim: d, subvectors: 32, centroids: 1024,
    calibration: .ownPrefill)
  let book = try ProductCodebook.train(
    keys: sample,
    configuration: try ProductQuantizerConfiguration(
      subvectors: 32, centroids: 1024, iterations: 3, batchSize: 4096), version: version)
  var store = ProductQuantizedKeyStore(codebook: book)
  try store.append(head.keys)
  let q = head.decodeQueries[0]
  let step = try HCAttentionStep()
  var scores = [Float]()
  t("pq scores") { scores = try! store.scores(queries: q, heads: 4, scale: 0.088) }
  // The same bytes a token as 4-bit codes over 2 dims (16 centroids), by fast scan.
  let version4 = CodebookVersion(
    geometry: "x", layer: 0, kvHead: 0, headDim: d, subvectors: 64, centroids: 16,
    calibration: .ownPrefill)
  var store4 = ProductQuantizedKeyStore(
    codebook: try ProductCodebook.train(
      keys: sample,
      configuration: try ProductQuantizerConfiguration(
        subvectors: 64, centroids: 16, iterations: 3, batchSize: 4096), version: version4))
  try store4.append(head.keys)
  var scores4 = [Float]()
  t("pq scores, 4-bit fast scan") {
    scores4 = try! store4.scores(queries: q, heads: 4, scale: 0.088)
  }
  var sel = [TauMassSelection]()
  t("select, per query head") { sel = try! step.select(approximateScores: scores, heads: 4) }
  print("kept", sel.map(\.indices.count))
  // Exact output attends a group's union; one set per KV head needs no union.
  var union = [TauMassSelection]()
  t("union of the group's sets") { union = TauMassSelection.groupUnion(sel) }
  print("union kept", union[0].indices.count)
  let grouped = try HCAttentionStep(scope: .kvGroup)
  var group = [TauMassSelection]()
  t("select, one set per KV head") {
    group = try! grouped.select(approximateScores: scores, heads: 4)
  }
  print("group kept", group[0].indices.count)
  t("select, one set per KV head, 4-bit scores") {
    group = try! grouped.select(approximateScores: scores4, heads: 4)
  }
  print("group kept, 4-bit scores", group[0].indices.count)
  t("context") {
    _ = try! step.contextVectors(selections: sel, queries: q, keys: nil, values: head.values)
  }
  t("full") {
    _ = try! FullAttention.attend(queries: q, heads: 4, keys: head.keys, values: head.values)
  }
}
