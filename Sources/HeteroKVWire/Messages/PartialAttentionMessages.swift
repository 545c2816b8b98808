import HeteroKVCore
import NIOCore

/// Near-data attention over chosen rows of one shard, for a group of query heads that share
/// the shard's KV head. Each query head names its own tokens and either
///
/// - ``Mode/weights``: their softmax weights (HCAttention: scores came from the key codes at
///   the worker); the node returns the weighted mean of the values with the weights' sum, or
/// - ``Mode/exact``: the query vector; the node re-scores the tokens with the stored keys
///   (scale × q·k), and returns the softmax-weighted mean with its running max and sum of
///   exponentials.
///
/// Either way the answer per head is (output, max, sumExp), which merges exactly with the
/// answers of other nodes by log-sum-exp rescaling. Only indices, weights and d-sized results
/// cross the wire.
///
/// Wire: shard (20) · mode u8 · flags u8 · queryHeads u16 · headDim u16 · scale f32, then
/// per head: count u32 · tokens u32[count] · weights f32[count] (weights mode) or
/// query f32[headDim] (exact mode). With flags bit 0 (shared tokens; the encoder sets it when
/// two or more heads name the same tokens, as a GQA group sending its union does) the
/// `count · tokens` part is written once, before the first head, and each head carries only
/// its weights or query.
public struct PartialAttentionRequest: DataPlaneRequest, Hashable {
  public typealias Response = PartialAttentionResponse
  public static let opcode = Opcode.partialAttention

  /// How the chosen tokens are weighted.
  public enum Mode: UInt8, Sendable, Hashable {
    /// The worker sends softmax weights; the node sums weighted values.
    case weights = 0
    /// The worker sends the query; the node scores with the stored keys.
    case exact = 1
  }

  /// One query head's part of the request.
  public struct Head: Sendable, Hashable {
    /// Token positions of the chosen rows.
    public var tokens: [UInt32]
    /// One weight per token (weights mode); empty in exact mode.
    public var weights: [Float]
    /// The query vector (exact mode); empty in weights mode.
    public var query: [Float]

    /// A head of a weights-mode request.
    public static func weighted(tokens: [UInt32], weights: [Float]) -> Head {
      Head(tokens: tokens, weights: weights, query: [])
    }

    /// A head of an exact-mode request.
    public static func exact(tokens: [UInt32], query: [Float]) -> Head {
      Head(tokens: tokens, weights: [], query: query)
    }
  }

  /// The shard whose rows are used.
  public var shard: ShardID
  /// Weights or exact.
  public var mode: Mode
  /// Head dimension (must match the shard).
  public var headDim: Int
  /// Score scale for exact mode, usually 1/√d.
  public var scale: Float
  /// Per query head, its tokens and weights or query.
  public var heads: [Head]

  public init(shard: ShardID, mode: Mode, headDim: Int, scale: Float, heads: [Head]) {
    self.shard = shard
    self.mode = mode
    self.headDim = headDim
    self.scale = scale
    self.heads = heads
  }

  public func encode(into buffer: inout ByteBuffer) {
    shard.encode(into: &buffer)
    buffer.writeInteger(mode.rawValue)
    let shared = sharesTokens
    buffer.writeInteger(shared ? sharedTokensFlag : 0)
    buffer.writeInteger(UInt16(heads.count), endianness: .little)
    buffer.writeInteger(UInt16(headDim), endianness: .little)
    buffer.writeInteger(scale.bitPattern, endianness: .little)
    if shared {
      buffer.writeInteger(UInt32(heads[0].tokens.count), endianness: .little)
      buffer.writeUInt32Array(heads[0].tokens)
    }
    for head in heads {
      if !shared {
        buffer.writeInteger(UInt32(head.tokens.count), endianness: .little)
        buffer.writeUInt32Array(head.tokens)
      }
      switch mode {
      case .weights: buffer.writeFloatArray(head.weights)
      case .exact: buffer.writeFloatArray(head.query)
      }
    }
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "partial attention")
    shard = try ShardID.decode(&r)
    let rawMode: UInt8 = try r.integer("mode")
    guard let mode = Mode(rawValue: rawMode) else {
      throw HeteroKVError(.invalidArgument, "partial attention: unknown mode \(rawMode)")
    }
    self.mode = mode
    let flags: UInt8 = try r.integer("flags")
    guard flags & ~sharedTokensFlag == 0 else {
      throw HeteroKVError(
        .invalidArgument, "partial attention: unknown flag bits 0x\(String(flags, radix: 16))")
    }
    let headCount = Int(try r.integer("queryHeads", as: UInt16.self))
    headDim = Int(try r.integer("headDim", as: UInt16.self))
    scale = try r.float("scale")
    try checkHeadDim(headDim, "partial attention", limits: limits)
    guard headCount > 0, headCount <= limits.maxQueryHeads else {
      throw HeteroKVError(
        .invalidArgument,
        "partial attention: \(headCount) query heads outside 1...\(limits.maxQueryHeads)")
    }
    guard scale.isFinite else {
      throw HeteroKVError(.invalidArgument, "partial attention: scale \(scale) is not finite")
    }
    var heads: [Head] = []
    heads.reserveCapacity(headCount)
    // The work a request asks for is bounded before anything is computed or copied: heads x
    // tokens stays under the limit (so a short frame cannot ask for a huge score matrix),
    // and every head's tokens name distinct rows in order (so a head reads at most its
    // shard); both are checked on the received bytes, before any token array is made.
    var cells = 0
    func count(_ tokens: Int, heads: Int, _ what: String) throws(HeteroKVError) {
      cells += tokens * heads
      guard cells <= limits.maxAttentionCells else {
        throw HeteroKVError(
          .invalidArgument,
          "partial attention: query heads x tokens exceeds \(limits.maxAttentionCells) at \(what)")
      }
    }
    var sharedTokens: [UInt32]?
    if flags & sharedTokensFlag != 0 {
      let n = Int(try r.integer("shared count", as: UInt32.self))
      try count(n, heads: headCount, "the shared tokens")
      let slice = try r.slice("shared tokens", count: n, stride: 4)
      try Self.checkAscending(slice, "the shared tokens")
      sharedTokens = slice.readUInt32Array()
    }
    for h in 0..<headCount {
      let tokens: [UInt32]
      if let sharedTokens {
        tokens = sharedTokens
      } else {
        let n = Int(try r.integer("head \(h) count", as: UInt32.self))
        try count(n, heads: 1, "head \(h)")
        let slice = try r.slice("head \(h) tokens", count: n, stride: 4)
        try Self.checkAscending(slice, "head \(h)'s tokens")
        tokens = slice.readUInt32Array()
      }
      let count = tokens.count
      switch mode {
      case .weights:
        let weights = try r.slice("head \(h) weights", count: count, stride: 4).readFloatArray()
        guard weights.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
          throw HeteroKVError(
            .invalidArgument, "partial attention: head \(h) has a negative or non-finite weight")
        }
        heads.append(.weighted(tokens: tokens, weights: weights))
      case .exact:
        let query = try r.slice("head \(h) query", count: headDim, stride: 4).readFloatArray()
        guard query.allSatisfy(\.isFinite) else {
          throw HeteroKVError(
            .invalidArgument, "partial attention: head \(h) query is not finite")
        }
        heads.append(.exact(tokens: tokens, query: query))
      }
    }
    self.heads = heads
    try r.finish()
  }

  /// Throws unless the little-endian u32 tokens in `slice` are strictly ascending: each row
  /// named once. Stops at the first that is not.
  static func checkAscending(_ slice: ByteBuffer, _ what: String) throws(HeteroKVError) {
    let problem: (UInt32, UInt32)? = slice.withUnsafeReadableBytes { raw in
      var previous: UInt32?
      for i in 0..<(raw.count / 4) {
        let token = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))
        if let previous, token <= previous { return (previous, token) }
        previous = token
      }
      return nil
    }
    if let (previous, token) = problem {
      throw HeteroKVError(
        .invalidArgument,
        "partial attention: \(what) must be strictly ascending (each row once); \(token) follows \(previous)"
      )
    }
  }

  /// Whether every head names the same tokens (and there are at least two heads).
  var sharesTokens: Bool {
    heads.count > 1 && heads.dropFirst().allSatisfy { $0.tokens == heads[0].tokens }
  }
}

/// Bit 0 of a partial-attention request's flags: one token list serves every head.
let sharedTokensFlag: UInt8 = 1

/// Per query head: the normalised output over the chosen rows, the largest score (0 in
/// weights mode) and Σ exp(score − max) (the weights' sum in weights mode). An empty head has
/// max −∞ and sum 0 and merges as nothing.
///
/// Wire: queryHeads u16 · headDim u16, then per head: max f32 · sumExp f32 · output
/// f32[headDim].
public struct PartialAttentionResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.partialAttention
  /// Head dimension.
  public var headDim: Int
  /// Per head, the largest scaled score.
  public var maxScores: [Float]
  /// Per head, Σ exp(score − max).
  public var sumExps: [Float]
  /// Normalised outputs, `[heads][headDim]`.
  public var outputs: [Float]

  public init(headDim: Int, maxScores: [Float], sumExps: [Float], outputs: [Float]) {
    precondition(maxScores.count == sumExps.count && outputs.count == maxScores.count * headDim)
    self.headDim = headDim
    self.maxScores = maxScores
    self.sumExps = sumExps
    self.outputs = outputs
  }

  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(UInt16(maxScores.count), endianness: .little)
    buffer.writeInteger(UInt16(headDim), endianness: .little)
    buffer.reserveCapacity(minimumWritableBytes: maxScores.count * (8 + 4 * headDim))
    for h in 0..<maxScores.count {
      buffer.writeInteger(maxScores[h].bitPattern, endianness: .little)
      buffer.writeInteger(sumExps[h].bitPattern, endianness: .little)
      buffer.writeFloatArray(Array(outputs[h * headDim..<(h + 1) * headDim]))
    }
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "partial attention response")
    let heads = Int(try r.integer("queryHeads", as: UInt16.self))
    headDim = Int(try r.integer("headDim", as: UInt16.self))
    try checkHeadDim(headDim, "partial attention response", limits: limits)
    guard heads <= limits.maxQueryHeads else {
      throw HeteroKVError(.malformedFrame, "partial attention response: \(heads) heads")
    }
    maxScores = []
    sumExps = []
    outputs = []
    outputs.reserveCapacity(heads * headDim)
    for h in 0..<heads {
      maxScores.append(try r.float("head \(h) max"))
      sumExps.append(try r.float("head \(h) sumExp"))
      outputs += try r.slice("head \(h) output", count: headDim, stride: 4).readFloatArray()
    }
    try r.finish()
  }
}

extension PartialAttentionRequest {
  /// The multiply-adds a request asks for (tokens x query heads x head dimension), read from
  /// its header without decoding it, so a server can choose where to run it before paying for
  /// the decode: exact with a shared token list, else from the payload's size (tokens take most
  /// of it). nil for a payload too short to hold the header (the decoder then says why).
  public static func estimatedWork(payload: ByteBuffer) -> Int? {
    let header = ShardID.encodedSize + 10
    guard payload.readableBytes >= header else { return nil }
    let base = payload.readerIndex + ShardID.encodedSize
    guard let flags = payload.getInteger(at: base + 1, as: UInt8.self),
      let heads = payload.getInteger(at: base + 2, endianness: .little, as: UInt16.self),
      let headDim = payload.getInteger(at: base + 4, endianness: .little, as: UInt16.self)
    else { return nil }
    if flags & sharedTokensFlag != 0,
      let shared = payload.getInteger(at: base + 10, endianness: .little, as: UInt32.self)
    {
      // Unchecked header values: the product saturates rather than trap (the decoder then
      // refuses a request this large).
      let (cells, overflow) = Int(shared).multipliedReportingOverflow(by: Int(heads))
      let (work, overflow2) = cells.multipliedReportingOverflow(by: Int(headDim))
      return overflow || overflow2 ? .max : work
    }
    return (payload.readableBytes / 4) * Int(headDim)
  }
}
