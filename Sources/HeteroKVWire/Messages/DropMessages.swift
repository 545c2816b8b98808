import HeteroKVCore
import NIOCore

/// Drops stored rows: one shard, every shard of a sequence, or every shard of a namespace.
///
/// Wire: scope u8 (0 shard, 1 sequence, 2 namespace) · shard (20; for a sequence only its
/// namespace and sequence are read, for a namespace only its namespace).
public struct DropRequest: DataPlaneRequest, Hashable {
  public typealias Response = DropResponse
  public static let opcode = Opcode.drop

  /// What a drop removes.
  public enum Scope: UInt8, Sendable, Hashable {
    case shard = 0
    case sequence = 1
    case namespace = 2
  }

  /// What to remove.
  public var scope: Scope
  /// The shard, or the sequence / namespace through its fields.
  public var shard: ShardID

  /// Drops one shard.
  public static func shard(_ shard: ShardID) -> DropRequest {
    DropRequest(scope: .shard, shard: shard)
  }

  /// Drops every shard of a sequence.
  public static func sequence(_ sequence: UInt64, namespace: UInt32 = 0) -> DropRequest {
    DropRequest(
      scope: .sequence,
      shard: ShardID(namespace: namespace, sequence: sequence, layer: 0, kvHead: 0))
  }

  /// Drops every shard of a namespace.
  public static func namespace(_ namespace: UInt32) -> DropRequest {
    DropRequest(
      scope: .namespace, shard: ShardID(namespace: namespace, sequence: 0, layer: 0, kvHead: 0))
  }

  public init(scope: Scope, shard: ShardID) {
    self.scope = scope
    self.shard = shard
  }

  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(scope.rawValue)
    shard.encode(into: &buffer)
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "drop")
    let raw: UInt8 = try r.integer("scope")
    guard let scope = Scope(rawValue: raw) else {
      throw HeteroKVError(.invalidArgument, "drop: unknown scope \(raw)")
    }
    self.scope = scope
    shard = try ShardID.decode(&r)
    try r.finish()
  }
}

/// What a drop freed.
///
/// Wire: shardsDropped u32 · bytesFreed u64.
public struct DropResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.drop
  /// Shards removed.
  public var shardsDropped: UInt32
  /// Page bytes returned to the pool.
  public var bytesFreed: UInt64

  public init(shardsDropped: UInt32, bytesFreed: UInt64) {
    self.shardsDropped = shardsDropped
    self.bytesFreed = bytesFreed
  }

  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(shardsDropped, endianness: .little)
    buffer.writeInteger(bytesFreed, endianness: .little)
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var r = PayloadReader(payload, what: "drop response")
    shardsDropped = try r.integer("shardsDropped")
    bytesFreed = try r.integer("bytesFreed")
    try r.finish()
  }
}
