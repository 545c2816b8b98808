import HeteroKVCore
import NIOCore

/// Appends `rowCount` rows, tokens `startToken ..< startToken + rowCount`, to a shard: fp16
/// values and, for heads whose full context lives on the memory tier, fp16 keys. A new shard
/// starts at `startToken`; an existing one accepts only the next contiguous tokens, with the
/// same head dimension and key presence. All rows are stored or none.
///
/// Wire: shard (20) · startToken u32 · rowCount u32 · headDim u16 · flags u16 (bit 0 keys) ·
/// values fp16[rowCount × headDim] · keys fp16[rowCount × headDim] if flagged.
public struct PutRequest: DataPlaneRequest, Hashable {
  public typealias Response = PutResponse
  public static let opcode = Opcode.put

  /// The shard appended to.
  public var shard: ShardID
  /// Token position of the first row.
  public var startToken: UInt32
  /// Number of rows.
  public var rowCount: Int
  /// Head dimension of each row.
  public var headDim: Int
  /// Raw fp16 values, `rowCount × headDim` of them.
  public var values: ByteBuffer
  /// Raw fp16 keys, when the shard keeps keys.
  public var keys: ByteBuffer?

  /// A put of `values` (and `keys`) given as fp16 arrays of `rows × headDim`.
  public init(
    shard: ShardID, startToken: UInt32, headDim: Int, values: [Float16], keys: [Float16]? = nil
  ) {
    precondition(headDim > 0 && values.count % headDim == 0)
    precondition(keys == nil || keys!.count == values.count)
    self.shard = shard
    self.startToken = startToken
    self.headDim = headDim
    self.rowCount = values.count / headDim
    var v = ByteBuffer()
    v.writeHalfArray(values)
    self.values = v
    if let keys {
      var k = ByteBuffer()
      k.writeHalfArray(keys)
      self.keys = k
    }
  }

  /// The refusal of a put that does not start where the shard ends (what the node says, and
  /// what ``expectedStart(inRefusal:)`` reads back).
  public static func misplacedStart(
    shard: ShardID, holds start: UInt64, to end: UInt64, got: UInt32
  ) -> HeteroKVError {
    HeteroKVError(
      .invalidArgument,
      "put: \(shard) holds tokens \(start)..<\(end); a batch must start at \(end), not \(got)")
  }

  /// Where the shard ends, from a ``misplacedStart(shard:holds:to:got:)`` refusal (nil for
  /// any other error): a writer whose put timed out but was applied learns the node's end.
  public static func expectedStart(inRefusal error: HeteroKVError) -> Int? {
    guard error.code == .invalidArgument,
      let marker = error.message.range(of: "a batch must start at ")
    else { return nil }
    return Int(error.message[marker.upperBound...].prefix { $0.isNumber })
  }

  /// A put of raw fp16 rows already in buffers (a copy between nodes: no conversion).
  public init(
    shard: ShardID, startToken: UInt32, headDim: Int, rowCount: Int, values: ByteBuffer,
    keys: ByteBuffer?
  ) {
    precondition(headDim > 0 && values.readableBytes == rowCount * headDim * 2)
    precondition(keys == nil || keys!.readableBytes == values.readableBytes)
    self.shard = shard
    self.startToken = startToken
    self.headDim = headDim
    self.rowCount = rowCount
    self.values = values
    self.keys = keys
  }

  public func encode(into buffer: inout ByteBuffer) {
    buffer.reserveCapacity(
      minimumWritableBytes: 32 + values.readableBytes + (keys?.readableBytes ?? 0))
    shard.encode(into: &buffer)
    buffer.writeInteger(startToken, endianness: .little)
    buffer.writeInteger(UInt32(rowCount), endianness: .little)
    buffer.writeInteger(UInt16(headDim), endianness: .little)
    buffer.writeInteger(keys == nil ? 0 : keysFlag, endianness: .little)
    buffer.writeImmutableBuffer(values)
    if let keys { buffer.writeImmutableBuffer(keys) }
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "put")
    shard = try ShardID.decode(&r)
    startToken = try r.integer("startToken")
    rowCount = Int(try r.integer("rowCount", as: UInt32.self))
    headDim = Int(try r.integer("headDim", as: UInt16.self))
    let flags: UInt16 = try r.integer("flags")
    try checkHeadDim(headDim, "put", limits: limits)
    guard rowCount > 0 else { throw HeteroKVError(.invalidArgument, "put: zero rows") }
    guard flags & ~keysFlag == 0 else {
      throw HeteroKVError(.invalidArgument, "put: unknown flag bits 0x\(String(flags, radix: 16))")
    }
    guard UInt64(startToken) + UInt64(rowCount) <= UInt64(UInt32.max) else {
      throw HeteroKVError(.invalidArgument, "put: token range passes 2^32")
    }
    values = try r.slice("values", count: rowCount * headDim, stride: 2)
    keys = flags & keysFlag != 0 ? try r.slice("keys", count: rowCount * headDim, stride: 2) : nil
    try r.finish()
  }
}

/// The shard's size after a put, and the node's use.
///
/// Wire: shardRows u32 · usedBytes u64 · capacityBytes u64.
public struct PutResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.put
  /// Rows the shard holds after the put.
  public var shardRows: UInt32
  /// Bytes of pages in use on the node.
  public var usedBytes: UInt64
  /// The node's capacity.
  public var capacityBytes: UInt64

  public init(shardRows: UInt32, usedBytes: UInt64, capacityBytes: UInt64) {
    self.shardRows = shardRows
    self.usedBytes = usedBytes
    self.capacityBytes = capacityBytes
  }

  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(shardRows, endianness: .little)
    buffer.writeInteger(usedBytes, endianness: .little)
    buffer.writeInteger(capacityBytes, endianness: .little)
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "put response")
    shardRows = try r.integer("shardRows")
    usedBytes = try r.integer("usedBytes")
    capacityBytes = try r.integer("capacityBytes")
    try r.finish()
  }
}
