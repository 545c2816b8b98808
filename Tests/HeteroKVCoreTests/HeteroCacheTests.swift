import Testing

@testable import HeteroKVCore

@Suite struct HeteroCacheTests {
  static func randomGraph(_ n: Int, seed: UInt64, density: Float) -> [[Bool]] {
    var rng = SeededGenerator(seed: seed)
    var e = [[Bool]](repeating: [Bool](repeating: false, count: n), count: n)
    for a in 0..<n {
      for b in (a + 1)..<max(a + 1, n) where rng.unit() < density { e[a][b] = true; e[b][a] = true }
    }
    return e
  }

  @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8])
  func rolesPartitionHeadsAndSatellitesNeighbourTheirPivot(seed: UInt64) throws {
    let n = 12
    let edges = Self.randomGraph(n, seed: seed, density: 0.3)
    var rng = SeededGenerator(seed: seed + 100)
    let stability = (0..<n).map { _ in Double(rng.unit()) }
    let similarity = edges.enumerated().map { a, row in
      row.enumerated().map { b, e in a == b ? 1.0 : (e ? 0.8 : 0.2) }
    }
    let config = HeteroCacheConfiguration()
    let roles = try HeadProfiler.roles(
      similarity: similarity, stability: stability, configuration: config)
    #expect(roles.count == n)
    let (stars, unclustered) = try StarClustering.cluster(edges: edges)
    var seen = Set<Int>()
    for star in stars {
      #expect(seen.insert(star.pivot).inserted)
      #expect(roles[star.pivot] == .pivot)
      for s in star.satellites {
        #expect(seen.insert(s).inserted)
        #expect(edges[star.pivot][s], "satellite \(s) is a neighbour of pivot \(star.pivot)")
        #expect(roles[s] == .satellite(pivot: star.pivot))
      }
    }
    for h in unclustered {
      #expect(seen.insert(h).inserted)
      #expect(roles[h] == (stability[h] >= 0.5 ? .anchor : .volatile))
      // An unclustered head has no unclustered neighbour left.
      for o in unclustered where o != h { #expect(!edges[h][o]) }
    }
    #expect(seen == Set(0..<n))
    // Deterministic for the same graph.
    let again = try StarClustering.cluster(edges: edges)
    #expect(again.stars == stars && again.unclustered == unclustered)
  }

  @Test func greedyPicksTheHighestDegreeFirst() throws {
    // 0-1, 0-2, 0-3, 4-5: head 0 has degree 3.
    var e = [[Bool]](repeating: [Bool](repeating: false, count: 6), count: 6)
    for (a, b) in [(0, 1), (0, 2), (0, 3), (4, 5), (3, 4)] { e[a][b] = true; e[b][a] = true }
    let (stars, rest) = try StarClustering.cluster(edges: e)
    #expect(stars == [Star(pivot: 0, satellites: [1, 2, 3]), Star(pivot: 4, satellites: [5])])
    #expect(rest.isEmpty)
  }

  @Test func asymmetricGraphIsRejected() {
    #expect(throws: HeteroKVError.self) {
      try StarClustering.cluster(edges: [[false, true], [false, false]])
    }
  }

  @Test func budgetRatiosAverageOneAndLessStableHeadsGetMore() throws {
    let stabilities = [0.9, 0.6, 0.3, 0.1, 0.05, 0.7]
    let roles: [HeadRole] = [.anchor, .anchor, .satellite(pivot: 4), .volatile, .pivot, .anchor]
    let profiles = stabilities.enumerated().map { i, s in
      HeadProfile(layer: i / 3, kvHead: i % 3, stability: s, similarity: [], role: roles[i])
    }
    let n = 10_000
    let budgets = try BudgetAllocator.allocate(
      profiles: profiles, memoryRatio: 0.5, prefillTokens: n)
    let compressed = budgets.filter { !$0.role.keepsFullContext }
    let meanRatio = compressed.map(\.ratio).reduce(0, +) / Double(compressed.count)
    #expect(abs(meanRatio - 1) < 1e-9)
    // B = floor((0.5*6 - 2) * n / 4) = 2500.
    let base = 2500
    for b in compressed { #expect(b.cap == min(Int((Double(base) * b.ratio).rounded(.down)), n)) }
    let sorted = compressed.sorted { $0.stability < $1.stability }
    for (x, y) in zip(sorted, sorted.dropFirst()) { #expect(x.cap >= y.cap) }
    #expect(sorted.first!.cap > sorted.last!.cap)
    for b in budgets where b.role.keepsFullContext { #expect(b.cap == n) }
    #expect(compressed.reduce(0) { $0 + $1.cap } <= base * compressed.count)
    #expect(throws: HeteroKVError.self) {
      try BudgetAllocator.allocate(profiles: profiles, memoryRatio: 0.2, prefillTokens: n)
    }
  }

  @Test func overlapAndTopSets() {
    #expect(AttentionPattern.overlap([1, 2, 3, 4], [3, 4, 5]) == 2.0 / 3.0)
    #expect(AttentionPattern.overlap([], [1]) == 0)
    #expect(AttentionPattern.top([0.1, 0.5, 0.3, 0.5, 0.2], k: 2) == [1, 3])
    let smoothed = AttentionPattern.smooth([0, 0, 5, 0, 0, 0, 0][...], width: 5)
    #expect(smoothed == [1, 1, 1, 1, 1, 0, 0])
  }

  @Test func lateQueriedNeedleMakesThePivotRefreshItsSatellites() throws {
    let base = try WorkloadTests.small(context: 4096, steps: 24)
    var config = HeteroCacheConfiguration()
    config.topK = 256
    let profiles = try HeteroCacheCalibration.profile(
      base.calibrationSample()!, configuration: config)
    let policy = HeteroCachePolicy(profiles: profiles, configuration: config)
    let kinds = base.headKinds(layer: 0)
    let pivot = profiles.first { $0.role == .pivot && kinds[$0.kvHead] == .topic }!.kvHead
    let satellites = profiles.filter { $0.role == .satellite(pivot: pivot) }.map(\.kvHead)
    #expect(!satellites.isEmpty)
    func positions(_ state: HeteroCachePolicy.State, _ h: Int) -> [Int] {
      if case .compressed(let c, _) = state.heads[h] { return c.positions.filter { $0 < 4096 } }
      return []
    }
    // Ask late for a needle that no satellite kept at prefill.
    let initial =
      try policy.prepare(layer: base.layer(0), geometry: base.geometry, budget: 0.125)
      as! HeteroCachePolicy.State
    let before = satellites.map { positions(initial, $0) }
    let asked = try #require(
      base.needlePositions.indices.first { i in
        before.allSatisfy { !$0.contains(base.needlePositions[i]) }
      })
    var c = base.configuration
    c.lateNeedle = asked
    let w = try SyntheticWorkload(c)
    let needle = w.needlePositions[asked]
    let layer = try w.layer(0)
    var state =
      try policy.prepare(layer: layer, geometry: w.geometry, budget: 0.125)
      as! HeteroCachePolicy.State
    #expect(satellites.map { positions(state, $0) } == before)
    var keys = layer.heads.map(\.keys)
    var values = layer.heads.map(\.values)
    for t in 0..<24 {
      for h in 0..<8 {
        try keys[h].append(layer.heads[h].decodeKeys[t])
        try values[h].append(layer.heads[h].decodeValues[t])
      }
      _ = try state.step(
        (0..<8).map {
          HeadStepInput(
            step: t, queries: layer.heads[$0].decodeQueries[t], keys: keys[$0], values: values[$0])
        })
    }
    #expect(state.retrievalSteps >= 1)
    #expect(state.retrievalSteps < 24)
    let after = satellites.map { positions(state, $0) }
    #expect(after != before, "satellite caches were refreshed")
    let holding = after.map { $0.contains(needle) }
    #expect(holding.allSatisfy { $0 }, "satellites now hold the needle the pivot found: \(holding)")
  }
}
