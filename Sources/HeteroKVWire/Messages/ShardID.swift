import HeteroKVCore
import NIOCore

/// One shard of the memory tier: the rows of one KV head of one layer of one sequence over one
/// chunk of token positions, in a tenant's namespace. Deterministic: the same sequence,
/// layer, head and chunk give the same id in every process. 20 bytes on the wire.
public struct ShardID: Sendable, Hashable, Comparable, CustomStringConvertible {
  /// The tenant's namespace; sequences of different namespaces never collide.
  public var namespace: UInt32
  /// The sequence.
  public var sequence: UInt64
  /// The layer.
  public var layer: UInt16
  /// The KV head within the layer.
  public var kvHead: UInt16
  /// The chunk of token positions.
  public var chunk: UInt32

  /// Encoded size in bytes.
  public static let encodedSize = 20

  /// A shard id from its parts.
  public init(
    namespace: UInt32 = 0, sequence: UInt64, layer: UInt16, kvHead: UInt16, chunk: UInt32 = 0
  ) {
    self.namespace = namespace
    self.sequence = sequence
    self.layer = layer
    self.kvHead = kvHead
    self.chunk = chunk
  }

  public var description: String {
    "ns\(namespace)/seq\(sequence)/L\(layer)/H\(kvHead)/C\(chunk)"
  }

  public static func < (a: ShardID, b: ShardID) -> Bool {
    (a.namespace, a.sequence, a.layer, a.kvHead, a.chunk)
      < (b.namespace, b.sequence, b.layer, b.kvHead, b.chunk)
  }

  /// Appends the 20 bytes of the id.
  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(namespace, endianness: .little)
    buffer.writeInteger(sequence, endianness: .little)
    buffer.writeInteger(layer, endianness: .little)
    buffer.writeInteger(kvHead, endianness: .little)
    buffer.writeInteger(chunk, endianness: .little)
  }

  static func decode(_ r: inout PayloadReader) throws(HeteroKVError) -> ShardID {
    ShardID(
      namespace: try r.integer("shard.namespace"), sequence: try r.integer("shard.sequence"),
      layer: try r.integer("shard.layer"), kvHead: try r.integer("shard.kvHead"),
      chunk: try r.integer("shard.chunk"))
  }
}
