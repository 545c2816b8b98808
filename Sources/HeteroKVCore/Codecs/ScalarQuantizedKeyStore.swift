import CHeteroKVKernels

/// Settings of scalar per-channel key quantization (KIVI-style): keys have outlier channels,
/// so each channel gets its own scale and zero point over a group of tokens.
public struct ScalarQuantizerConfiguration: Sendable, Hashable, Codable {
  /// Bits per channel: 2, 4 or 8.
  public var bits: Int
  /// Tokens quantized together (one scale and zero point per channel per group).
  public var groupSize: Int
  /// Most recent tokens kept in fp16 before they are quantized.
  public var window: Int

  /// A configuration; throws for bit widths other than 2, 4, 8 or non-positive sizes.
  public init(bits: Int = 4, groupSize: Int = 64, window: Int = 128) throws {
    guard [2, 4, 8].contains(bits) else {
      throw HeteroKVError.unsupported(
        "scalar key quantization supports 2, 4 or 8 bits, not \(bits)")
    }
    guard groupSize > 0, window >= 0 else {
      throw HeteroKVError.invalid(
        "group size must be positive and window non-negative (got \(groupSize), \(window))")
    }
    self.bits = bits
    self.groupSize = groupSize
    self.window = window
  }
}

/// Keys of one head quantized per channel over groups of tokens, with a full-precision window
/// of recent tokens. Needs no calibration. Scores fold each group's scales and zero points into
/// the query once, then read only the packed codes.
public struct ScalarQuantizedKeyStore: QuantizedKeyStore {
  /// One group of quantized tokens.
  struct Group: Sendable {
    var scales: [Float16]
    var zeros: [Float16]
    var codes: [UInt8]
  }

  /// Groups stored back to back, so one kernel call scores them all: per group `[d]` scales,
  /// `[d]` zero points and `[groupSize][d * bits / 8]` packed codes.
  var scales: [Float16] = []
  var zeros: [Float16] = []
  var codes: [UInt8] = []
  var groupCount = 0

  /// The quantizer settings.
  public let configuration: ScalarQuantizerConfiguration
  public let headDim: Int
  var recent: HalfMatrix

  /// An empty store; the head dim must be a multiple of 8 / bits x channels per byte.
  public init(headDim: Int, configuration: ScalarQuantizerConfiguration) throws {
    let perByte = 8 / configuration.bits
    guard headDim > 0, headDim <= 1024, headDim % perByte == 0 else {
      throw HeteroKVError.dimension(
        "head dim \(headDim) does not pack into \(configuration.bits)-bit codes")
    }
    self.headDim = headDim
    self.configuration = configuration
    self.recent = HalfMatrix(cols: headDim)
  }

  var bytesPerToken: Int { headDim * configuration.bits / 8 }

  public var count: Int { groupCount * configuration.groupSize + recent.rows }

  public var residentBytes: Int {
    codes.count + (scales.count + zeros.count) * 2 + recent.byteCount
  }

  /// Group `index` (for tests and decoding).
  func group(_ index: Int) -> Group {
    let d = headDim
    let size = configuration.groupSize * bytesPerToken
    return Group(
      scales: Array(scales[index * d..<(index + 1) * d]),
      zeros: Array(zeros[index * d..<(index + 1) * d]),
      codes: Array(codes[index * size..<(index + 1) * size]))
  }

  public mutating func append(_ keys: HalfMatrix) throws {
    guard keys.cols == headDim else {
      throw HeteroKVError.dimension("keys have \(keys.cols) dims, store expects \(headDim)")
    }
    try requireFinite(keys.floats(), "key rows")
    try recent.append(contentsOf: keys)
    // Every complete group older than the window is quantized in one pass, and the window
    // is trimmed once (trimming per group made a long prefill quadratic).
    let g = configuration.groupSize
    let flush =
      recent.rows >= g + configuration.window ? (recent.rows - configuration.window) / g : 0
    guard flush > 0 else { return }
    let rows = recent.gather(Array(0..<flush * g)).floats()
    let size = g * headDim
    for i in 0..<flush {
      let group = quantize(Array(rows[i * size..<(i + 1) * size]))
      scales += group.scales
      zeros += group.zeros
      codes += group.codes
    }
    groupCount += flush
    recent.removeFirst(flush * g)
  }

  func quantize(_ rows: [Float]) -> Group {
    let d = headDim
    let n = rows.count / d
    let levels = Float((1 << configuration.bits) - 1)
    var scales = [Float16](repeating: 0, count: d)
    var zeros = [Float16](repeating: 0, count: d)
    var steps = [Float](repeating: 0, count: d)
    var offsets = [Float](repeating: 0, count: d)
    for c in 0..<d {
      var lo = Float.infinity
      var hi = -Float.infinity
      for t in 0..<n {
        lo = min(lo, rows[t * d + c])
        hi = max(hi, rows[t * d + c])
      }
      // Zero point rounded down and step rounded up in fp16, so every value lies inside the
      // representable range and the error stays within half a step.
      var z = Float16(lo)
      if Float(z) > lo { z = z.nextDown }
      var s = Float16((hi - Float(z)) / levels)
      while Float(s) * levels + Float(z) < hi { s = s.nextUp }
      zeros[c] = z
      scales[c] = s
      steps[c] = Float(s)
      offsets[c] = Float(z)
    }
    let perByte = 8 / configuration.bits
    let stride = d / perByte
    var codes = [UInt8](repeating: 0, count: n * bytesPerToken)
    for t in 0..<n {
      for c in 0..<d {
        let q: Float =
          steps[c] > 0 ? ((rows[t * d + c] - offsets[c]) / steps[c]).rounded() : 0
        let code = UInt8(min(max(q, 0), levels))
        let slot = c / stride
        codes[t * bytesPerToken + c % stride] |= code << UInt8(slot * configuration.bits)
      }
    }
    return Group(scales: scales, zeros: zeros, codes: codes)
  }

  func code(_ group: Group, token: Int, channel c: Int) -> UInt8 {
    let stride = headDim / (8 / configuration.bits)
    let byte = group.codes[token * bytesPerToken + c % stride]
    let mask = UInt8((1 << configuration.bits) - 1)
    return (byte >> UInt8((c / stride) * configuration.bits)) & mask
  }

  public func decodedKey(at index: Int) -> [Float] {
    let g = configuration.groupSize
    if index >= groupCount * g { return recent.row(index - groupCount * g) }
    let group = group(index / g)
    return (0..<headDim).map { c in
      Float(group.zeros[c]) + Float(group.scales[c])
        * Float(code(group, token: index % g, channel: c))
    }
  }

  public func scores(queries: [Float], heads: Int, scale: Float) throws -> [Float] {
    try validateQueries(queries, heads: heads)
    let n = count
    let d = headDim
    let g = configuration.groupSize
    var out = [Float](repeating: 0, count: heads * n)
    scales.withUnsafeBufferPointer { sc in
      zeros.withUnsafeBufferPointer { zp in
        sc.withMemoryRebound(to: UInt16.self) { sc16 in
          zp.withMemoryRebound(to: UInt16.self) { zp16 in
            out.withUnsafeMutableBufferPointer { o in
              hkv_sq_group_scores(
                queries, heads, codes, sc16.baseAddress!, zp16.baseAddress!, groupCount, g, d,
                configuration.bits, scale, o.baseAddress!, n)
            }
          }
        }
      }
    }
    if recent.rows > 0 {
      let tail = Kernels.scores(queries: queries, heads: heads, keys: recent, scale: scale)
      let base = groupCount * g
      for h in 0..<heads {
        out.replaceSubrange(
          h * n + base..<h * n + n, with: tail[h * recent.rows..<(h + 1) * recent.rows])
      }
    }
    return out
  }
}
