/// How one KV head's keys are coded for approximate scores: the codec and its sizes, the tokens
/// scored exactly, and how a codebook is trained. One recipe for the worker and the evaluation
/// harness, so both hold, score with and measure the same index.
public struct KeyIndexRecipe: Sendable, Hashable {
  /// The key codec.
  public enum Codec: String, Sendable, Hashable, CaseIterable {
    /// Product quantization: one code per `groupSize` dims.
    case pq
    /// Scalar quantization per dim, one scale and zero point per 64 tokens.
    case scalar
  }

  public var codec: Codec
  /// Bits per code: the codebook index (pq) or the quantized value (scalar).
  public var bits: Int
  /// Head dims per pq code.
  public var groupSize: Int
  /// Leading tokens scored from fp16 keys.
  public var sinks: Int
  /// Trailing tokens scored from fp16 keys.
  public var window: Int
  /// Most keys a codebook is trained on (spread evenly over a longer prefill).
  public var trainingKeys = 32768
  /// pq: train and code in the space where distance is score error over the prefill's last
  /// queries (`QueryMomentTransform`), when the queries are known at training time.
  public var queryAware = false

  public init(codec: Codec, bits: Int, groupSize: Int, sinks: Int, window: Int) {
    self.codec = codec
    self.bits = bits
    self.groupSize = groupSize
    self.sinks = sinks
    self.window = window
  }

  /// Centroids of a pq codebook trained on `keys` keys: 2^bits, fewer for a short prefill
  /// (one per 32 keys rounded up to a power of two, at least 16), so that the codebook's fixed
  /// cost stays small beside the codes and no centroid is fitted to a handful of keys.
  public func centroids(trainingKeys keys: Int) -> Int {
    var c = 16
    while c < keys / 32 { c *= 2 }
    return min(1 << bits, c)
  }

  /// k-means passes and points per pass for a codebook of `c` centroids. A 16-centroid
  /// codebook (4-bit codes) is cheap to search, and on real keys its score error fell by 40%
  /// from 5 passes of 2,048 points to 12 of 8,192 (docs/benchmarks.md); larger codebooks keep
  /// 5 of 2,048, where more cost seconds at the end of a prefill for little.
  public static func kMeansSchedule(centroids c: Int) -> (iterations: Int, batchSize: Int) {
    c <= 16 ? (12, 8192) : (5, 2048)
  }

  /// What the index costs at `tokens` tokens as a share of the head's fp16 K+V: the codes, the
  /// codebook (pq: fp16 centroids) or the per-64-token scales (scalar), and the fp16 keys of
  /// the sinks and the window.
  public func share(headDim d: Int, tokens n: Int) -> Double {
    guard n > 0, d > 0 else { return 1 }
    let perToken: Double
    let fixed: Double
    switch codec {
    case .pq:
      perToken = Double(d / max(1, groupSize) * bits) / 8
      fixed =
        Double(centroids(trainingKeys: min(n, trainingKeys)) * d * 2)
        + (queryAware ? Double(d * d * 2 + d * 4) : 0)
    case .scalar:
      perToken = Double(d * bits) / 8 + Double(2 * d * 4) / 64
      fixed = 0
    }
    let exact = Double(min(n, window + sinks) * d * 2)
    return min(1, (Double(n) * perToken + fixed + exact) / (Double(n) * Double(4 * d)))
  }

  /// This recipe with codes twice as fine (half the dims per pq code): what a head the
  /// budget buys finer codes for is coded with.
  public var finer: KeyIndexRecipe {
    var r = self
    r.groupSize = max(1, groupSize / 2)
    return r
  }

  /// This recipe sized to `budget` (a share of fp16 K/V) at `n` tokens: pq codes coarsened,
  /// the group size doubled while it divides the head, until the share and `heldRows` fp16
  /// rows a head holds fit. Itself when it fits, or for scalar codes. Codes sized this way are
  /// the paper's rule; what they leave of the budget buys finer codes or cache rows.
  public func fitting(budget: Double, headDim d: Int, tokens n: Int, heldRows: Int)
    -> KeyIndexRecipe
  {
    guard codec == .pq else { return self }
    let held = Double(heldRows) / Double(max(1, n))
    var r = self
    while r.share(headDim: d, tokens: n) + held > budget, r.groupSize * 2 <= d,
      d % (r.groupSize * 2) == 0
    {
      r.groupSize *= 2
    }
    return r
  }

  /// How many of `heads` coded heads a `budget` (share of fp16 K/V) buys finer codes for
  /// after an `n`-token prefill: what it leaves over this recipe's share and `heldRows` fp16
  /// rows a head holds before shipping them, over what finer codes add per head. 0 for
  /// scalar codes or an odd group size.
  public func finerCodeHeads(
    _ heads: Int, budget: Double, headDim d: Int, prefillTokens n: Int, heldRows: Int
  ) -> Int {
    guard codec == .pq, groupSize % 2 == 0 else { return 0 }
    let coarse = share(headDim: d, tokens: n)
    let extra = finer.share(headDim: d, tokens: n) - coarse
    guard extra > 0 else { return 0 }
    let tail = Double(heldRows) / Double(max(1, n))
    return min(
      heads, max(0, Int(((budget - coarse - tail) / extra * Double(heads)).rounded(.down))))
  }

  /// The `count` heads finer codes go to: the largest reconstruction `errors` first, among
  /// the heads `eligible` admits (the worker's seal and the harness pick them alike).
  public static func finerCodePicks(
    errors: [Double], count: Int, eligible: (Int) -> Bool = { _ in true }
  ) -> [Int] {
    Array(errors.indices.filter(eligible).sorted { errors[$0] > errors[$1] }.prefix(count))
  }

  /// Relative squared error of `index`'s pq codes over a sample of `keys` (the ones it
  /// coded, from the first): how badly the codes reconstruct this head's keys, which ranks
  /// heads for finer codes; 0 for other codecs.
  public static func reconstructionError(of index: ApproximateKeyIndex, keys: HalfMatrix) -> Double
  {
    guard let store = index.codes as? ProductQuantizedKeyStore, keys.rows > 0 else { return 0 }
    var error = 0.0
    var norm = 0.0
    let step = max(1, keys.rows / 256)
    for j in stride(from: 0, to: min(keys.rows, store.count), by: step) {
      let k = keys.row(j)
      let r = store.decodedKey(at: j)
      for i in 0..<k.count {
        error += Double((k[i] - r[i]) * (k[i] - r[i]))
        norm += Double(k[i] * k[i])
      }
    }
    return norm > 0 ? error / norm : 0
  }

  /// An empty index of this recipe for one head, its codebook (pq) trained on `keys` (at most
  /// `trainingKeys` of them, spread evenly); query-aware when the recipe says so and `queries`
  /// (the group's last prefill queries, `[rows][d]`) are given.
  public func index(
    training keys: HalfMatrix, queries: [Float]? = nil, geometry: String, layer: Int,
    kvHead: Int
  ) throws -> ApproximateKeyIndex {
    let d = keys.cols
    let codes: any QuantizedKeyStore
    switch codec {
    case .scalar:
      // Scalar codes group tokens (64 per scale and zero point); the exact window is the
      // index's own.
      codes = try ScalarQuantizedKeyStore(
        headDim: d,
        configuration: ScalarQuantizerConfiguration(bits: bits, groupSize: 64, window: 0))
    case .pq:
      guard groupSize > 0, d % groupSize == 0 else {
        throw HeteroKVError.invalid("group size \(groupSize) does not divide head dim \(d)")
      }
      let g = d / groupSize
      let sample =
        keys.rows > trainingKeys
        ? keys.gather((0..<trainingKeys).map { $0 * keys.rows / trainingKeys }) : keys
      let c = centroids(trainingKeys: sample.rows)
      let schedule = Self.kMeansSchedule(centroids: c)
      let configuration = try ProductQuantizerConfiguration(
        subvectors: g, centroids: c, iterations: schedule.iterations,
        batchSize: schedule.batchSize, seed: 1)
      let version = CodebookVersion(
        geometry: geometry, layer: layer, kvHead: kvHead, headDim: d, subvectors: g,
        centroids: c, calibration: .ownPrefill)
      let transform =
        queryAware ? queries.flatMap { QueryMomentTransform(queries: $0, dim: d) } : nil
      codes = ProductQuantizedKeyStore(
        codebook: try ProductCodebook.train(
          keys: sample, configuration: configuration, version: version, transform: transform))
    }
    return ApproximateKeyIndex(codes: codes, sinks: sinks, window: window)
  }
}
