import HeteroKVCore
import NIOCore

/// Asks a node for its capacity, use and counts. Empty payload.
public struct StatsRequest: DataPlaneRequest, Hashable {
  public typealias Response = StatsResponse
  public static let opcode = Opcode.stats

  public init() {}
  public func encode(into buffer: inout ByteBuffer) {}
  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    try PayloadReader(payload, what: "stats").finish()
  }
}

/// A node's capacity and use.
///
/// Wire: capacityBytes u64 · usedBytes u64 · storedBytes u64 · shardCount u32 ·
/// sequenceCount u32 · rowCount u64.
public struct StatsResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.stats
  /// Configured capacity of the page pool.
  public var capacityBytes: UInt64
  /// Bytes of pages handed out.
  public var usedBytes: UInt64
  /// Bytes of row data stored (at most `usedBytes`).
  public var storedBytes: UInt64
  /// Shards stored.
  public var shardCount: UInt32
  /// Distinct (namespace, sequence) pairs stored.
  public var sequenceCount: UInt32
  /// Rows stored over all shards.
  public var rowCount: UInt64

  public init(
    capacityBytes: UInt64, usedBytes: UInt64, storedBytes: UInt64, shardCount: UInt32,
    sequenceCount: UInt32, rowCount: UInt64
  ) {
    self.capacityBytes = capacityBytes
    self.usedBytes = usedBytes
    self.storedBytes = storedBytes
    self.shardCount = shardCount
    self.sequenceCount = sequenceCount
    self.rowCount = rowCount
  }

  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(capacityBytes, endianness: .little)
    buffer.writeInteger(usedBytes, endianness: .little)
    buffer.writeInteger(storedBytes, endianness: .little)
    buffer.writeInteger(shardCount, endianness: .little)
    buffer.writeInteger(sequenceCount, endianness: .little)
    buffer.writeInteger(rowCount, endianness: .little)
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "stats response")
    capacityBytes = try r.integer("capacityBytes")
    usedBytes = try r.integer("usedBytes")
    storedBytes = try r.integer("storedBytes")
    shardCount = try r.integer("shardCount")
    sequenceCount = try r.integer("sequenceCount")
    rowCount = try r.integer("rowCount")
    try r.finish()
  }
}

/// An empty round trip. Empty payload both ways.
public struct PingRequest: DataPlaneRequest, Hashable {
  public typealias Response = PingResponse
  public static let opcode = Opcode.ping
  public init() {}
  public func encode(into buffer: inout ByteBuffer) {}
  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    try PayloadReader(payload, what: "ping").finish()
  }
}

/// The answer to a ping.
public struct PingResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.ping
  public init() {}
  public func encode(into buffer: inout ByteBuffer) {}
  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    try PayloadReader(payload, what: "ping response").finish()
  }
}
