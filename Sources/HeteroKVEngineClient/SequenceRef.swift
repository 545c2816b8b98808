import HeteroKVWire

/// A sequence as the worker knows it: a tenant's namespace and the sequence's number in it.
public struct SequenceRef: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
  /// The tenant's namespace.
  public var namespace: UInt32
  /// The sequence within the namespace.
  public var sequence: UInt64

  public init(namespace: UInt32 = 0, sequence: UInt64) {
    self.namespace = namespace
    self.sequence = sequence
  }

  public var description: String { "\(namespace)/\(sequence)" }

  public static func < (a: SequenceRef, b: SequenceRef) -> Bool {
    (a.namespace, a.sequence) < (b.namespace, b.sequence)
  }

  /// The shard holding tokens of `chunk` of one KV head of one layer.
  package func shard(layer: Int, kvHead: Int, chunk: Int) -> ShardID {
    ShardID(
      namespace: namespace, sequence: sequence, layer: UInt16(layer), kvHead: UInt16(kvHead),
      chunk: UInt32(chunk))
  }

  /// The wire form.
  public var proto: Heterokv_V1_SequenceRef {
    .with {
      $0.namespace = namespace
      $0.sequence = sequence
    }
  }

  /// From the wire form.
  public init(_ proto: Heterokv_V1_SequenceRef) {
    self.init(namespace: proto.namespace, sequence: proto.sequence)
  }
}
