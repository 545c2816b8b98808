/// Approximate scores for every token of one KV head, as a worker keeps them: key codes for the
/// whole context, plus full-precision keys for the first `sinks` tokens and the last `window`
/// tokens, whose scores replace the coded ones (attention piles up there, and the newest
/// tokens are the ones codes have seen least of). Codec-agnostic: any `QuantizedKeyStore`.
public struct ApproximateKeyIndex: Sendable {
  /// The codes of every token.
  public private(set) var codes: any QuantizedKeyStore
  /// Leading tokens scored exactly.
  public let sinks: Int
  /// Trailing tokens scored exactly.
  public let window: Int
  private var sinkKeys: HalfMatrix
  private var recentKeys: HalfMatrix

  /// An index over `codes` (usually empty) with exact sinks and window.
  public init(codes: any QuantizedKeyStore, sinks: Int, window: Int) {
    precondition(sinks >= 0 && window >= 0)
    self.codes = codes
    self.sinks = sinks
    self.window = window
    sinkKeys = HalfMatrix(cols: codes.headDim)
    recentKeys = HalfMatrix(cols: codes.headDim)
  }

  /// Tokens indexed.
  public var count: Int { codes.count }
  /// Head dimension.
  public var headDim: Int { codes.headDim }
  /// Bytes resident: codes, codebook share, and the exact sink and window keys.
  public var residentBytes: Int {
    codes.residentBytes + sinkKeys.byteCount + recentKeys.byteCount
  }

  /// Appends keys `[rows][d]`.
  public mutating func append(_ keys: HalfMatrix) throws {
    guard keys.cols == headDim else {
      throw HeteroKVError.dimension("keys have \(keys.cols) dims, the index \(headDim)")
    }
    try codes.append(keys)
    if sinkKeys.rows < sinks {
      try sinkKeys.append(contentsOf: keys.gather(Array(0..<min(keys.rows, sinks - sinkKeys.rows))))
    }
    guard window > 0 else { return }
    let tail = keys.rows > window ? keys.gather(Array((keys.rows - window)..<keys.rows)) : keys
    try recentKeys.append(contentsOf: tail)
    if recentKeys.rows > window { recentKeys.removeFirst(recentKeys.rows - window) }
  }

  /// `scale · q[h]·k[j]` for every query head and token, head-major `[heads][count]`: from the
  /// codes, with the sinks and the window scored exactly.
  public func scores(queries: [Float], heads: Int, scale: Float) throws -> [Float] {
    var s = try codes.scores(queries: queries, heads: heads, scale: scale)
    let n = count
    func overwrite(_ keys: HalfMatrix, from start: Int) {
      guard keys.rows > 0 else { return }
      let exact = Kernels.scores(queries: queries, heads: heads, keys: keys, scale: scale)
      for h in 0..<heads {
        for j in 0..<keys.rows { s[h * n + start + j] = exact[h * keys.rows + j] }
      }
    }
    overwrite(sinkKeys, from: 0)
    // Where the window overlaps the sinks the values agree: both are exact.
    overwrite(recentKeys, from: n - recentKeys.rows)
    return s
  }
}
