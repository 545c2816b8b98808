/// One star of the similarity graph: a pivot and the heads similar to it.
public struct Star: Sendable, Hashable, Codable {
  public var pivot: Int
  public var satellites: [Int]
}

/// Greedy star clustering of a layer's heads, as HeteroCache does it: among unassigned heads
/// the one with the most unassigned neighbours becomes a pivot (ties to the lowest index), its
/// unassigned neighbours become its satellites; repeat while some unassigned head has an
/// unassigned neighbour. Deterministic for a given graph.
public enum StarClustering {
  /// Clusters heads given a symmetric adjacency matrix (`edges[a][b]` for a ≠ b).
  public static func cluster(edges: [[Bool]]) throws -> (stars: [Star], unclustered: [Int]) {
    let n = edges.count
    for (a, row) in edges.enumerated() {
      guard row.count == n else {
        throw HeteroKVError.dimension("adjacency row \(a) has \(row.count) entries, expected \(n)")
      }
      for b in 0..<n where a != b && row[b] != edges[b][a] {
        throw HeteroKVError.invalid("adjacency is not symmetric at (\(a), \(b))")
      }
    }
    var assigned = [Bool](repeating: false, count: n)
    var stars: [Star] = []
    while true {
      var best = -1
      var bestDegree = 0
      for a in 0..<n where !assigned[a] {
        let degree = (0..<n).filter { $0 != a && !assigned[$0] && edges[a][$0] }.count
        if degree > bestDegree {
          best = a
          bestDegree = degree
        }
      }
      if best < 0 { break }
      let satellites = (0..<n).filter { $0 != best && !assigned[$0] && edges[best][$0] }
      assigned[best] = true
      for s in satellites { assigned[s] = true }
      stars.append(Star(pivot: best, satellites: satellites))
    }
    return (stars, (0..<n).filter { !assigned[$0] })
  }

  /// Edges where similarity ≥ threshold.
  public static func edges(similarity: [[Double]], threshold: Double) -> [[Bool]] {
    similarity.enumerated().map { a, row in
      row.enumerated().map { b, s in a != b && s >= threshold }
    }
  }
}
