/// Thresholds and sizes of HeteroCache (defaults from its paper and published code).
public struct HeteroCacheConfiguration: Sendable, Hashable, Codable {
  /// Size of the top sets compared (1024).
  public var topK: Int = 1024
  /// Width of the average pool applied to attention rows (5).
  public var poolWidth: Int = 5
  /// Overlap at or above which two heads are joined by an edge (0.5).
  public var similarityThreshold: Double = 0.5
  /// Stability at or above which an unclustered head is an anchor (0.5); also the drift
  /// threshold of pivots.
  public var stabilityThreshold: Double = 0.5
  /// Decode steps between a pivot's drift checks (5).
  public var driftInterval: Int = 5

  /// The published defaults.
  public init() {}

  /// A configuration with explicit values, range-checked.
  public init(
    topK: Int, poolWidth: Int = 5, similarityThreshold: Double = 0.5,
    stabilityThreshold: Double = 0.5, driftInterval: Int = 5
  ) throws {
    guard topK > 0, poolWidth > 0, poolWidth % 2 == 1, driftInterval > 0 else {
      throw HeteroKVError.invalid(
        "HeteroCache needs topK > 0, an odd pool width and a positive drift interval")
    }
    guard (0...1).contains(similarityThreshold), (0...1).contains(stabilityThreshold) else {
      throw HeteroKVError.invalid("HeteroCache thresholds must lie in [0, 1]")
    }
    self.topK = topK
    self.poolWidth = poolWidth
    self.similarityThreshold = similarityThreshold
    self.stabilityThreshold = stabilityThreshold
    self.driftInterval = driftInterval
  }

  /// The pattern a head is compared by: smoothed, group-averaged last-query attention.
  public func topSet(probabilities: [Float], groupSize: Int) -> [Int] {
    let mean = AttentionPattern.meanOfRows(probabilities, rows: groupSize)
    let smoothed = AttentionPattern.smooth(mean[...], width: poolWidth)
    return AttentionPattern.top(smoothed, k: topK)
  }
}

/// Collects one layer's calibration observations (last-query attention at prefill and at
/// decode steps, per KV head and its query group) and turns them into head profiles: stability,
/// similarity, and roles by star clustering.
public struct HeadProfiler: Sendable {
  public let layer: Int
  public let kvHeads: Int
  public let groupSize: Int
  public let configuration: HeteroCacheConfiguration
  var prefillTop: [[Int]]? = nil
  var decodeTop: [[[Int]]] = []

  public init(layer: Int, kvHeads: Int, groupSize: Int, configuration: HeteroCacheConfiguration) {
    self.layer = layer
    self.kvHeads = kvHeads
    self.groupSize = groupSize
    self.configuration = configuration
  }

  func topSets(_ probabilities: [[Float]]) throws -> [[Int]] {
    guard probabilities.count == kvHeads else {
      throw HeteroKVError.dimension(
        "layer \(layer): got attention of \(probabilities.count) KV heads, expected \(kvHeads)")
    }
    return try probabilities.enumerated().map { h, p in
      guard !p.isEmpty, p.count % groupSize == 0 else {
        throw HeteroKVError.dimension(
          "layer \(layer) head \(h): \(p.count) probabilities do not split into \(groupSize) rows")
      }
      try requireFinite(p, "calibration attention of layer \(layer) head \(h)")
      return configuration.topSet(probabilities: p, groupSize: groupSize)
    }
  }

  /// Records the prefill's last-query probabilities, per KV head `[groupSize][n]`.
  public mutating func recordPrefill(_ probabilities: [[Float]]) throws {
    prefillTop = try topSets(probabilities)
  }

  /// Records one decode step's probabilities, per KV head `[groupSize][n + t]`.
  public mutating func recordDecode(_ probabilities: [[Float]]) throws {
    decodeTop.append(try topSets(probabilities))
  }

  /// The profiles of this layer's heads.
  public func profiles() throws -> [HeadProfile] {
    guard let prefillTop else {
      throw HeteroKVError(.emptyContext, "layer \(layer): no prefill attention was recorded")
    }
    guard !decodeTop.isEmpty else {
      throw HeteroKVError(.emptyContext, "layer \(layer): no decode steps were recorded")
    }
    let stability = (0..<kvHeads).map { h in
      median(decodeTop.map { AttentionPattern.overlap($0[h], prefillTop[h]) })
    }
    let observations = [prefillTop] + decodeTop
    var similarity = [[Double]](repeating: [Double](repeating: 1, count: kvHeads), count: kvHeads)
    for a in 0..<kvHeads {
      for b in (a + 1)..<max(a + 1, kvHeads) {
        let s =
          observations.map { AttentionPattern.overlap($0[a], $0[b]) }.reduce(0, +)
          / Double(observations.count)
        similarity[a][b] = s
        similarity[b][a] = s
      }
    }
    let roles = try Self.roles(
      similarity: similarity, stability: stability, configuration: configuration)
    return (0..<kvHeads).map {
      HeadProfile(
        layer: layer, kvHead: $0, stability: stability[$0], similarity: similarity[$0],
        role: roles[$0])
    }
  }

  /// Roles from similarity and stability: stars become pivots and satellites; the rest are
  /// anchors when stable enough, volatile otherwise.
  public static func roles(
    similarity: [[Double]], stability: [Double], configuration: HeteroCacheConfiguration
  ) throws -> [HeadRole] {
    let edges = StarClustering.edges(
      similarity: similarity, threshold: configuration.similarityThreshold)
    let (stars, unclustered) = try StarClustering.cluster(edges: edges)
    var roles = [HeadRole](repeating: .volatile, count: similarity.count)
    for star in stars {
      roles[star.pivot] = .pivot
      for s in star.satellites { roles[s] = .satellite(pivot: star.pivot) }
    }
    for h in unclustered {
      roles[h] = stability[h] >= configuration.stabilityThreshold ? .anchor : .volatile
    }
    return roles
  }
}
