import HeteroKVCore
import NIOCore

/// Asks for rows of a shard by token position: only the chosen rows cross the wire.
///
/// Wire: shard (20) · flags u16 (bit 0 keys too) · count u32 · tokens u32[count].
public struct GatherRequest: DataPlaneRequest, Hashable {
  public typealias Response = GatherResponse
  public static let opcode = Opcode.gather

  /// The shard read.
  public var shard: ShardID
  /// Token positions, in the order the rows should come back (repeats allowed).
  public var tokens: [UInt32]
  /// Whether to return keys as well as values (the shard must keep keys).
  public var includeKeys: Bool

  public init(shard: ShardID, tokens: [UInt32], includeKeys: Bool = false) {
    self.shard = shard
    self.tokens = tokens
    self.includeKeys = includeKeys
  }

  public func encode(into buffer: inout ByteBuffer) {
    shard.encode(into: &buffer)
    buffer.writeInteger(includeKeys ? keysFlag : 0, endianness: .little)
    buffer.writeInteger(UInt32(tokens.count), endianness: .little)
    buffer.writeUInt32Array(tokens)
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "gather")
    shard = try ShardID.decode(&r)
    let flags: UInt16 = try r.integer("flags")
    guard flags & ~keysFlag == 0 else {
      throw HeteroKVError(
        .invalidArgument, "gather: unknown flag bits 0x\(String(flags, radix: 16))")
    }
    includeKeys = flags & keysFlag != 0
    let count = Int(try r.integer("count", as: UInt32.self))
    tokens = try r.slice("tokens", count: count, stride: 4).readUInt32Array()
    try r.finish()
  }
}

/// The gathered rows in request order: fp16 values, then fp16 keys if asked for.
///
/// Wire: count u32 · headDim u16 · flags u16 (bit 0 keys) · values fp16[count × headDim] ·
/// keys fp16[count × headDim] if flagged.
public struct GatherResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.gather
  /// Rows returned.
  public var rowCount: Int
  /// Head dimension.
  public var headDim: Int
  /// Raw fp16 values.
  public var values: ByteBuffer
  /// Raw fp16 keys, when asked for.
  public var keys: ByteBuffer?

  public init(rowCount: Int, headDim: Int, values: ByteBuffer, keys: ByteBuffer?) {
    self.rowCount = rowCount
    self.headDim = headDim
    self.values = values
    self.keys = keys
  }

  /// The values as fp16, `rowCount × headDim`.
  public var valueArray: [Float16] { values.readHalfArray() }
  /// The keys as fp16, when present.
  public var keyArray: [Float16]? { keys?.readHalfArray() }

  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(UInt32(rowCount), endianness: .little)
    buffer.writeInteger(UInt16(headDim), endianness: .little)
    buffer.writeInteger(keys == nil ? 0 : keysFlag, endianness: .little)
    buffer.writeImmutableBuffer(values)
    if let keys { buffer.writeImmutableBuffer(keys) }
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "gather response")
    rowCount = Int(try r.integer("count", as: UInt32.self))
    headDim = Int(try r.integer("headDim", as: UInt16.self))
    let flags: UInt16 = try r.integer("flags")
    try checkHeadDim(headDim, "gather response", limits: limits)
    values = try r.slice("values", count: rowCount * headDim, stride: 2)
    keys = flags & keysFlag != 0 ? try r.slice("keys", count: rowCount * headDim, stride: 2) : nil
    try r.finish()
  }
}
