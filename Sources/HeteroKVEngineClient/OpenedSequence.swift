import HeteroKVCore
import HeteroKVWire

/// A sequence as a worker opened it: the geometry it serves and the memory nodes its shards
/// are placed on.
public struct OpenedSequence: Sendable, Hashable {
  /// The sequence.
  public var ref: SequenceRef
  /// The model geometry the worker serves it with.
  public var geometry: ModelGeometry
  /// The placement's version (it changes when the node set does).
  public var placementVersion: UInt64
  /// Ids of the memory nodes placed onto.
  public var nodes: [String]
  /// Copies of each shard.
  public var replication: Int

  /// A sequence's description from its parts.
  public init(
    ref: SequenceRef, geometry: ModelGeometry, placementVersion: UInt64, nodes: [String],
    replication: Int
  ) {
    self.ref = ref
    self.geometry = geometry
    self.placementVersion = placementVersion
    self.nodes = nodes
    self.replication = replication
  }

  /// The wire form.
  public var proto: Heterokv_V1_SequenceInfo {
    .with {
      $0.ref = ref.proto
      $0.model = geometry.name
      $0.layers = UInt32(geometry.layers)
      $0.queryHeads = UInt32(geometry.queryHeads)
      $0.kvHeads = UInt32(geometry.kvHeads)
      $0.headDim = UInt32(geometry.headDim)
      $0.placementVersion = placementVersion
      $0.nodes = nodes
      $0.replication = UInt32(replication)
    }
  }

  /// What a worker answered; throws when its geometry is not a valid one.
  public init(_ proto: Heterokv_V1_SequenceInfo) throws(HeteroKVError) {
    let geometry: ModelGeometry
    do {
      geometry = try ModelGeometry(
        name: proto.model, layers: Int(proto.layers), queryHeads: Int(proto.queryHeads),
        kvHeads: Int(proto.kvHeads), headDim: Int(proto.headDim))
    } catch {
      throw HeteroKVError(
        .malformedInput, "sequence info: the geometry is not valid: \(error)", cause: error)
    }
    self.init(
      ref: SequenceRef(proto.ref), geometry: geometry, placementVersion: proto.placementVersion,
      nodes: proto.nodes, replication: Int(proto.replication))
  }
}
