import CHeteroKVKernels

/// Settings of HCAttention's product quantization of keys.
public struct ProductQuantizerConfiguration: Sendable, Hashable, Codable {
  /// Sub-vectors per key (g): the head dim is split into g equal parts, each coded by 16 bits.
  public var subvectors: Int
  /// Centroids per sub-vector codebook (c), at most 65,536 so a code fits 16 bits.
  public var centroids: Int
  /// Mini-batch k-means iterations.
  public var iterations: Int
  /// Points per mini-batch.
  public var batchSize: Int
  /// Seed of the k-means sampling.
  public var seed: UInt64

  /// A configuration; checks the ranges that the 16-bit codes and the kernels need.
  public init(
    subvectors: Int = 32, centroids: Int = 4096, iterations: Int = 8, batchSize: Int = 8192,
    seed: UInt64 = 1
  ) throws {
    guard subvectors > 0 else { throw HeteroKVError.invalid("subvectors must be positive") }
    guard centroids >= 2, centroids <= 65536 else {
      throw HeteroKVError.unsupported(
        "PQ centroids must be in 2...65536 for 16-bit codes, got \(centroids)")
    }
    guard iterations > 0, batchSize > 0 else {
      throw HeteroKVError.invalid("k-means iterations and batch size must be positive")
    }
    self.subvectors = subvectors
    self.centroids = centroids
    self.iterations = iterations
    self.batchSize = batchSize
    self.seed = seed
  }
}

/// Where a codebook's training keys came from. HCAttention's default is the sequence's own
/// prefill; a calibration set lets many sequences share one codebook.
public enum CalibrationSource: Sendable, Hashable, Codable {
  /// The keys of the sequence being coded.
  case ownPrefill
  /// A named calibration sample.
  case calibrationSet(String)
}

/// Identifies what a codebook was trained for, so a codebook is never applied to keys of
/// another geometry, layer or head.
public struct CodebookVersion: Sendable, Hashable, Codable {
  /// Bumped when the codebook layout changes.
  public static let currentFormat = 1
  public var format: Int = CodebookVersion.currentFormat
  public var geometry: String
  public var layer: Int
  public var kvHead: Int
  public var headDim: Int
  public var subvectors: Int
  public var centroids: Int
  public var calibration: CalibrationSource

  public init(
    geometry: String, layer: Int, kvHead: Int, headDim: Int, subvectors: Int, centroids: Int,
    calibration: CalibrationSource
  ) {
    self.geometry = geometry
    self.layer = layer
    self.kvHead = kvHead
    self.headDim = headDim
    self.subvectors = subvectors
    self.centroids = centroids
    self.calibration = calibration
  }
}

/// The k-means codebooks of one (layer, KV head): for each of g sub-spaces, c centroids of
/// d/g dims, stored in fp16 as `[g][c][d/g]`; with a query-moment transform, the centroids
/// live in its coded space (keys are mapped before coding, queries before scoring).
public struct ProductCodebook: Sendable {
  public let version: CodebookVersion
  /// Centroids, fp16, `[subvectors][centroids][subDim]`.
  public let centroids: [Float16]
  /// The map from keys to the space the centroids live in; nil: the keys' own space.
  public let transform: QueryMomentTransform?

  /// A codebook from stored centroids (`[g][c][d/g]`, fp16), e.g. loaded from elsewhere.
  public init(
    version: CodebookVersion, centroids: [Float16], transform: QueryMomentTransform? = nil
  )
    throws
  {
    guard version.subvectors > 0, version.headDim % version.subvectors == 0,
      centroids.count == version.centroids * version.headDim
    else {
      throw HeteroKVError.dimension(
        "codebook holds \(centroids.count) values, expected \(version.centroids) x \(version.headDim)"
      )
    }
    if let transform, transform.dim != version.headDim {
      throw HeteroKVError.dimension(
        "query-moment transform has \(transform.dim) dims, the codebook \(version.headDim)")
    }
    self.version = version
    self.centroids = centroids
    self.transform = transform
  }

  /// Dimension of one sub-vector.
  public var subDim: Int { version.headDim / version.subvectors }
  /// Bytes of the stored centroids and transform.
  public var byteCount: Int { centroids.count * 2 + (transform?.byteCount ?? 0) }

  /// Trains codebooks on `keys` by mini-batch k-means (per sub-space: centroids start at
  /// distinct sampled keys; each batch assigns points to the nearest centroid and moves it by
  /// 1/count toward them), in the coded space of `transform` when one is given.
  public static func train(
    keys: HalfMatrix, configuration: ProductQuantizerConfiguration, version: CodebookVersion,
    transform: QueryMomentTransform? = nil
  ) throws -> ProductCodebook {
    let d = keys.cols
    let g = configuration.subvectors
    let c = configuration.centroids
    guard d == version.headDim, g == version.subvectors, c == version.centroids else {
      throw HeteroKVError.dimension("codebook version does not match the keys and configuration")
    }
    guard d % g == 0 else {
      throw HeteroKVError.dimension("head dim \(d) is not divisible into \(g) sub-vectors")
    }
    guard keys.rows > 0 else {
      throw HeteroKVError(.emptyContext, "cannot train a codebook on 0 keys")
    }
    let raw = keys.floats()
    try requireFinite(raw, "calibration keys")
    if let transform, transform.dim != d {
      throw HeteroKVError.dimension(
        "query-moment transform has \(transform.dim) dims, the keys \(d)")
    }
    let points = transform?.keysToCodedSpace(raw) ?? raw
    let s = d / g
    let n = keys.rows
    var rng = SeededGenerator(
      seed: configuration.seed, stream: [UInt64(version.layer), UInt64(version.kvHead)])
    var all = [Float16]()
    all.reserveCapacity(g * c * s)
    let batch = min(configuration.batchSize, n)
    var sample = [Float](repeating: 0, count: batch * s)
    var codes = [UInt16](repeating: 0, count: batch)
    for i in 0..<g {
      // Initial centroids: distinct random keys (with replacement only when n < c).
      var cent = [Float](repeating: 0, count: c * s)
      let start =
        n >= c
        ? sampleDistinct(c, from: n, using: &rng) : (0..<c).map { _ in Int(rng.next() % UInt64(n)) }
      for (m, j) in start.enumerated() {
        for t in 0..<s {
          cent[m * s + t] = points[j * d + i * s + t] + (n >= c ? 0 : 1e-3 * rng.gaussian())
        }
      }
      var counts = [Float](repeating: 0, count: c)
      for _ in 0..<configuration.iterations {
        for b in 0..<batch {
          let j = batch == n ? b : Int(rng.next() % UInt64(n))
          for t in 0..<s { sample[b * s + t] = points[j * d + i * s + t] }
        }
        guard hkv_nearest_centroids_aos(sample, batch, s, s, cent, c, &codes, 1) == 0 else {
          throw HeteroKVError(
            .resourceExhausted, "no memory for the coding tables of \(c) centroids")
        }
        for b in 0..<batch {
          let m = Int(codes[b])
          counts[m] += 1
          let lr = 1 / counts[m]
          for t in 0..<s { cent[m * s + t] += lr * (sample[b * s + t] - cent[m * s + t]) }
        }
      }
      all.append(contentsOf: Kernels.toHalf(cent))
    }
    return try ProductCodebook(version: version, centroids: all, transform: transform)
  }

  /// Codes `keys`: for each key and sub-space the index of the nearest centroid, `[n][g]`.
  public func encode(_ keys: HalfMatrix) throws -> [UInt16] {
    guard keys.cols == version.headDim else {
      throw HeteroKVError.dimension(
        "keys have \(keys.cols) dims, codebook \(version.geometry) expects \(version.headDim)")
    }
    let raw = keys.floats()
    try requireFinite(raw, "keys to encode")
    let points = transform?.keysToCodedSpace(raw) ?? raw
    let g = version.subvectors
    let c = version.centroids
    let s = subDim
    var codes = [UInt16](repeating: 0, count: keys.rows * g)
    // The kernel lays out each sub-space's table from the fp16 centroids in scratch: a decode
    // step codes one key per head, and building the tables here cost more than coding it.
    let failed = centroids.withUnsafeBufferPointer { cb in
      cb.withMemoryRebound(to: UInt16.self) { cents in
        points.withUnsafeBufferPointer { p in
          codes.withUnsafeMutableBufferPointer { out in
            (0..<g).contains { i in
              hkv_nearest_centroids_f16(
                p.baseAddress! + i * s, keys.rows, version.headDim, s,
                cents.baseAddress! + i * c * s, c, out.baseAddress! + i, g) != 0
            }
          }
        }
      }
    }
    if failed {
      throw HeteroKVError(.resourceExhausted, "no memory for the coding tables of \(c) centroids")
    }
    return codes
  }

  /// The key that `codes` (one row of g) stand for.
  public func decode(_ codes: ArraySlice<UInt16>) -> [Float] {
    let c = version.centroids
    let s = subDim
    var out = [Float]()
    out.reserveCapacity(version.headDim)
    for (i, code) in codes.enumerated() {
      let base = (i * c + Int(code)) * s
      for t in 0..<s { out.append(Float(centroids[base + t])) }
    }
    return transform?.keysFromCodedSpace(out) ?? out
  }

  static func sampleDistinct(_ k: Int, from n: Int, using rng: inout SeededGenerator) -> [Int] {
    // Partial Fisher-Yates over 0..<n.
    var pool = Array(0..<n)
    for i in 0..<k {
      let j = i + Int(rng.next() % UInt64(n - i))
      pool.swapAt(i, j)
    }
    return Array(pool[0..<k])
  }
}

/// Keys of one head as product-quantization codes, scored through a per-query lookup table
/// T[i][m] = q_i · C[i][m]: z_j = Σ_i T[i][code_j,i]. Codes of 16-centroid codebooks take
/// four bits each, in blocks of 32 tokens scored by byte shuffles against a table quantized to
/// bytes (fast scan: memory speed); larger codebooks take a byte (at most 256 centroids) or two
/// per code. One-byte codes are kept in blocks of 64 tokens and scored from a byte table held in
/// registers where the CPU can look 256 entries up that way (AVX-512 VBMI), else from a float
/// table.
public struct ProductQuantizedKeyStore: QuantizedKeyStore {
  /// The codebook the codes index.
  public let codebook: ProductCodebook
  private var storage: CodeStorage
  /// Tokens stored.
  public private(set) var count = 0

  /// Codes as they are kept.
  enum CodeStorage: Sendable {
    /// Four bits a code in blocks of 32 tokens (`hkv_pq4_code_offset`), whole blocks, zero past
    /// the last token.
    case packed([UInt8])
    /// A byte a code, `[count][g]`.
    case narrow([UInt8])
    /// A byte a code in blocks of 64 tokens (`hkv_pq8_code_offset`), whole blocks, zero past
    /// the last token.
    case blocked([UInt8])
    /// 16 bits a code, `[count][g]`.
    case wide([UInt16])

    var byteCount: Int {
      switch self {
      case .packed(let c), .narrow(let c), .blocked(let c): c.count
      case .wide(let c): c.count * 2
      }
    }
  }

  /// Whether a codebook's codes are kept in 4 bits for the fast scan: 16 centroids or fewer,
  /// and few enough sub-spaces that its 16-bit sums stay exact.
  static func packs(_ version: CodebookVersion) -> Bool {
    version.centroids <= 16 && version.subvectors <= 256
  }

  /// Whether one-byte codes are kept in blocks for byte tables: where the kernels look those
  /// up in registers (on other CPUs a float table scores token-major codes faster), and for few
  /// enough sub-spaces that the 16-bit sums stay exact.
  static func blocksCodes(_ version: CodebookVersion) -> Bool {
    version.subvectors <= 256 && hkv_pq8_lookups_in_registers() != 0
  }

  /// Codes, `[count][g]`.
  public var codes: [UInt16] {
    let g = codebook.version.subvectors
    return switch storage {
    case .packed(let c):
      (0..<count * g).map { UInt16(Self.nibble(c, g: g, token: $0 / g, subspace: $0 % g)) }
    case .narrow(let c): c.map(UInt16.init)
    case .blocked(let c):
      (0..<count * g).map { UInt16(c[hkv_pq8_code_offset(g, $0 / g, $0 % g)]) }
    case .wide(let c): c
    }
  }

  private static func nibble(_ bytes: [UInt8], g: Int, token: Int, subspace: Int) -> UInt8 {
    let byte = bytes[hkv_pq4_code_offset(g, token, subspace)]
    return subspace % 2 == 0 ? byte & 15 : byte >> 4
  }

  /// An empty store over a trained codebook.
  public init(codebook: ProductCodebook) {
    self.codebook = codebook
    storage =
      Self.packs(codebook.version)
      ? .packed([])
      : codebook.version.centroids > 256
        ? .wide([]) : Self.blocksCodes(codebook.version) ? .blocked([]) : .narrow([])
  }

  /// A store over existing codes (`[count][g]`), each below the codebook's centroid count.
  public init(codebook: ProductCodebook, codes: [UInt16]) throws {
    let g = codebook.version.subvectors
    guard codes.count % g == 0 else {
      throw HeteroKVError.dimension("\(codes.count) codes do not form rows of \(g)")
    }
    if let bad = codes.first(where: { Int($0) >= codebook.version.centroids }) {
      throw HeteroKVError.invalid(
        "code \(bad) is outside the \(codebook.version.centroids) centroids")
    }
    self.init(codebook: codebook)
    append(codes: codes)
  }

  private mutating func append(codes new: [UInt16]) {
    let g = codebook.version.subvectors
    let rows = new.count / g
    // Each case moves its array out of `storage` first, so the append does not copy it.
    switch storage {
    case .packed(var c):
      storage = .packed([])
      Self.growToWholeBlocks(
        &c, tokens: count + rows, blockTokens: HKV_PQ4_BLOCK, blockBytes: hkv_pq4_block_bytes(g))
      hkv_pq4_pack(new, rows, g, count, &c)
      storage = .packed(c)
    case .narrow(var c):
      storage = .narrow([])
      c.append(contentsOf: new.map { UInt8(truncatingIfNeeded: $0) })
      storage = .narrow(c)
    case .blocked(var c):
      storage = .blocked([])
      Self.growToWholeBlocks(
        &c, tokens: count + rows, blockTokens: HKV_PQ8_BLOCK, blockBytes: hkv_pq8_block_bytes(g))
      hkv_pq8_pack(new, rows, g, count, &c)
      storage = .blocked(c)
    case .wide(var c):
      storage = .wide([])
      c.append(contentsOf: new)
      storage = .wide(c)
    }
    count += rows
  }

  /// Zero bytes appended to `codes` until it holds the whole blocks that `tokens` reach (the
  /// blocked layouts' packers write into them).
  private static func growToWholeBlocks(
    _ codes: inout [UInt8], tokens: Int, blockTokens: Int, blockBytes: Int
  ) {
    let need = (tokens + blockTokens - 1) / blockTokens * blockBytes
    if codes.count < need { codes.append(contentsOf: repeatElement(0, count: need - codes.count)) }
  }

  public var headDim: Int { codebook.version.headDim }
  /// Codes, plus the codebook when it was trained on this sequence's own prefill (then it is
  /// this sequence's cost; a calibration-set codebook is shared by every sequence).
  /// One-byte blocked codes count the bytes their tokens fill: the rest of the last block is
  /// room for the next tokens, like an array's spare capacity (at most 63 tokens' codes).
  public var residentBytes: Int {
    let codes =
      if case .blocked = storage { count * codebook.version.subvectors } else { storage.byteCount }
    return codes + (codebook.version.calibration == .ownPrefill ? codebook.byteCount : 0)
  }

  /// Whether scores come from a table quantized to bytes (4-bit and blocked one-byte codes), so
  /// each errs from the float table's by at most half the head's step per sub-space.
  var scoresFromByteTable: Bool {
    switch storage {
    case .packed, .blocked: true
    case .narrow, .wide: false
    }
  }

  public mutating func append(_ keys: HalfMatrix) throws {
    append(codes: try codebook.encode(keys))
  }

  public func decodedKey(at index: Int) -> [Float] {
    let g = codebook.version.subvectors
    return switch storage {
    case .packed(let c):
      codebook.decode((0..<g).map { UInt16(Self.nibble(c, g: g, token: index, subspace: $0)) }[...])
    case .narrow(let c): codebook.decode(c[index * g..<(index + 1) * g].map(UInt16.init)[...])
    case .blocked(let c):
      codebook.decode((0..<g).map { UInt16(c[hkv_pq8_code_offset(g, index, $0)]) }[...])
    case .wide(let c): codebook.decode(c[index * g..<(index + 1) * g])
    }
  }

  /// Scores of 4-bit (fast scan) or blocked one-byte codes: the query table quantized to bytes
  /// once per call, then the kernel, which writes every score (no zeroing first: 2 MiB a head at
  /// 128K x 4 heads).
  private func byteTableScores(queries: [Float], heads: Int, scale: Float) -> [Float] {
    let (g, c, n) = (codebook.version.subvectors, codebook.version.centroids, count)
    let scaled = queries.map { $0 * scale }
    let q = codebook.transform?.queriesToCodedSpace(scaled) ?? scaled
    var step = [Float](repeating: 0, count: heads)
    var bias = [Float](repeating: 0, count: heads)
    return codebook.centroids.withUnsafeBufferPointer { cb in
      cb.withMemoryRebound(to: UInt16.self) { cb16 -> [Float] in
        let centroids = cb16.baseAddress!
        switch storage {
        case .packed(let codes):
          var lut = [UInt8](repeating: 0, count: heads * hkv_pq4_subspaces(g) * 16)
          hkv_pq4_lut(centroids, g, c, codebook.subDim, q, heads, &lut, &step, &bias)
          return [Float](unsafeUninitializedCapacity: heads * n) { out, written in
            if heads * n > 0 {
              hkv_pq4_scores(lut, step, bias, heads, g, codes, n, out.baseAddress!, n)
            }
            written = heads * n
          }
        case .blocked(let codes):
          // The builder writes every entry of the table.
          let lut = [UInt8](unsafeUninitializedCapacity: heads * g * 256) { table, written in
            let scratch = UnsafeMutableBufferPointer<Float>.allocate(capacity: 4 * g * 256)
            defer { scratch.deallocate() }
            hkv_pq8_lut(
              centroids, g, c, codebook.subDim, q, heads, scratch.baseAddress!, table.baseAddress!,
              &step, &bias)
            written = heads * g * 256
          }
          return [Float](unsafeUninitializedCapacity: heads * n) { out, written in
            if heads * n > 0 {
              hkv_pq8_scores(lut, step, bias, heads, g, codes, n, out.baseAddress!, n)
            }
            written = heads * n
          }
        case .narrow, .wide:
          preconditionFailure("float-table codes are scored in scores(queries:heads:scale:)")
        }
      }
    }
  }

  public func scores(queries: [Float], heads: Int, scale: Float) throws -> [Float] {
    try validateQueries(queries, heads: heads)
    let g = codebook.version.subvectors
    let c = codebook.version.centroids
    let n = count
    let d = headDim
    if scoresFromByteTable {
      return byteTableScores(queries: queries, heads: heads, scale: scale)
    }
    guard heads * n > 0 else { return [] }
    // Four query heads per table: one 16-byte load per code serves all four. Each table's
    // kernel writes four rows of scores in place (nothing is zeroed or copied: at 8K tokens
    // that was 0.3 MB of writes a head); the last table's rows past `heads` fall in spare
    // capacity and are dropped. The table builder writes every entry, padding lanes included.
    let tables = (heads + 3) / 4
    let lut = UnsafeMutableBufferPointer<Float>.allocate(capacity: g * c * 4)
    defer { lut.deallocate() }
    return [Float](unsafeUninitializedCapacity: tables * 4 * n) { out, written in
      for first in stride(from: 0, to: heads, by: 4) {
        let group = min(4, heads - first)
        let scaled = queries[first * d..<(first + group) * d].map { $0 * scale }
        let q = codebook.transform?.queriesToCodedSpace(scaled) ?? scaled
        codebook.centroids.withUnsafeBufferPointer { cb in
          cb.withMemoryRebound(to: UInt16.self) { cb16 in
            hkv_pq_lut_x4(cb16.baseAddress!, g, c, codebook.subDim, q, group, lut.baseAddress!)
          }
        }
        let rows = out.baseAddress! + first * n
        switch storage {
        case .narrow(let codes): hkv_pq_scores_x4_u8(lut.baseAddress!, g, c, codes, n, rows)
        case .wide(let codes): hkv_pq_scores_x4(lut.baseAddress!, g, c, codes, n, rows)
        case .packed, .blocked:
          preconditionFailure("packed and blocked codes are scored from byte tables above")
        }
      }
      written = heads * n
    }
  }
}
