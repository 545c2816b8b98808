/// What HeteroCache decided a KV head is, from its calibration profile.
public enum HeadRole: Sendable, Hashable, Codable, CustomStringConvertible {
  /// Unclustered and stable: a compressed cache chosen at prefill, never refreshed.
  case anchor
  /// Unclustered and unstable: full context, scored through the HCAttention path.
  case volatile
  /// Centre of a star cluster: full context; watches its own drift for its satellites.
  case pivot
  /// Similar to `pivot`: a compressed cache refreshed from the pivot's top positions.
  case satellite(pivot: Int)

  /// Whether the head keeps its full context (on memory nodes in HeteroKV).
  public var keepsFullContext: Bool {
    switch self {
    case .pivot, .volatile: true
    case .anchor, .satellite: false
    }
  }

  /// Short name: anchor, volatile, pivot, satellite.
  public var name: String {
    switch self {
    case .anchor: "anchor"
    case .volatile: "volatile"
    case .pivot: "pivot"
    case .satellite: "satellite"
    }
  }

  /// The role a `name` stands for (`pivot` gives a satellite its pivot); nil for an
  /// unknown name. The inverse of `name`, as roles travel between processes.
  public init?(name: String, pivot: Int) {
    switch name {
    case "anchor": self = .anchor
    case "volatile": self = .volatile
    case "pivot": self = .pivot
    case "satellite": self = .satellite(pivot: pivot)
    default: return nil
    }
  }

  public var description: String {
    if case .satellite(let p) = self { return "satellite(of \(p))" }
    return name
  }
}

/// The calibration profile of one KV head.
public struct HeadProfile: Sendable, Hashable, Codable {
  public var layer: Int
  public var kvHead: Int
  /// Median overlap of decode-time top sets with the prefill top set, in [0, 1].
  public var stability: Double
  /// Overlap with each head of the same layer (1 with itself).
  public var similarity: [Double]
  public var role: HeadRole

  public init(layer: Int, kvHead: Int, stability: Double, similarity: [Double], role: HeadRole) {
    self.layer = layer
    self.kvHead = kvHead
    self.stability = stability
    self.similarity = similarity
    self.role = role
  }
}
