import Testing

@testable import HeteroKVCore

/// Compressed caches that hold their budget through decode, the observation-vote prefix, and
/// the selection a recalling head still needs from the memory tier.
@Suite struct CompressedCacheBudgetTests {
  /// A cache of `positions` over random rows, each row's seed mass its own position's entry of
  /// `mass`.
  func cache(positions: [Int], mass: [Float]) throws -> CompressedHeadCache {
    let keys = try randomMatrix(rows: positions.count, cols: 8, seed: 3)
    return try CompressedHeadCache(positions: positions, rows: keys, values: keys, mass: mass)
  }

  @Test("past its capacity a cache evicts its least-attended row, never a sink or a recent row")
  func evictsLeastMass() throws {
    // Positions 0 (a sink), 10, 20, 30, 40; 20 has the least mass, 0 even less.
    var c = try cache(positions: [0, 10, 20, 30, 40], mass: [0, 5, 1, 3, 4])
    c.holdBudget(capacity: 5, sinks: 1, recent: 2)
    #expect(c.positions == [0, 10, 20, 30, 40])
    try c.append(
      key: [Float](repeating: 1, count: 8), value: [Float](repeating: 1, count: 8), position: 50)
    #expect(c.positions == [0, 10, 30, 40, 50])
    #expect(c.keys.rows == 5 && c.values.rows == 5 && c.mass.count == 5)
    // Next: 50 and 60 are the recent two, so 30 (mass 3) goes before 40 (4) and 10 (5).
    try c.append(
      key: [Float](repeating: 2, count: 8), value: [Float](repeating: 2, count: 8), position: 60)
    #expect(c.positions == [0, 10, 40, 50, 60])
    #expect(c.keys.row(4) == [Float](repeating: 2, count: 8))
  }

  @Test("the budget is a share of the context: it grows by the cap's share of every new token")
  func budgetGrowsWithTheContext() throws {
    let row = [Float](repeating: 1, count: 8)
    // A head keeping all of its context never evicts.
    var whole = try cache(positions: [0, 1, 2, 3], mass: [0, 0, 0, 0])
    whole.holdBudget(capacity: 4, growth: 1, sinks: 0, recent: 0)
    for t in 4..<12 { try whole.append(key: row, value: row, position: t) }
    #expect(whole.positions == Array(0..<12))
    // A head keeping half of it gains a row every second token.
    var half = try cache(positions: [0, 2, 4, 6], mass: [1, 1, 1, 1])
    half.holdBudget(capacity: 4, growth: 0.5, sinks: 0, recent: 1)
    for t in 8..<16 { try half.append(key: row, value: row, position: t) }
    #expect(half.positions.count == 8 && half.capacity == 8)
  }

  @Test("drawn attention mass accumulates and decides what stays")
  func accumulatedMassDecides() throws {
    var c = try cache(positions: [1, 2, 3], mass: [0, 0, 0])
    c.holdBudget(capacity: 3, sinks: 0, recent: 1)
    let q = randomFloats(16, seed: 9)
    let (partial, drawn) = try c.attendWeighing(queries: q, heads: 2)
    // The drawn mass of two heads sums to 2, and the output is the plain exact attention.
    #expect(abs(drawn.reduce(0, +) - 2) < 1e-4)
    #expect(partial.outputs == (try c.attend(queries: q, heads: 2)).outputs)
    c.accumulate(drawn)
    #expect(c.mass == drawn)
    let weakest = c.positions[drawn.dropLast().enumerated().min { $0.element < $1.element }!.offset]
    try c.append(
      key: [Float](repeating: 0, count: 8), value: [Float](repeating: 0, count: 8), position: 4)
    #expect(!c.positions.contains(weakest) && c.positions.count == 3 && c.positions.last == 4)
  }

  @Test(
    "a refresh keeps the decoded rows and the budget; refreshed rows take the replaced rows' mean")
  func refreshKeepsBudget() throws {
    var c = try cache(positions: [0, 5, 9, 100, 101], mass: [4, 2, 6, 1, 1])
    c.holdBudget(capacity: 5, sinks: 1, recent: 1)
    let refreshed = try cache(positions: [0, 3, 7, 8], mass: [0, 0, 0, 0])
    let merged = try c.keepingRows(from: 100, after: refreshed)
    #expect(merged.capacity == 5)
    // 4 refreshed rows (mass 4 each, the mean of 4, 2, 6) + 2 decoded: one goes. Decoded 100
    // has the least mass; 101 is recent and 0 a sink.
    #expect(merged.positions == [0, 3, 7, 8, 101])
    #expect(merged.mass.prefix(4).allSatisfy { $0 == 4 })
  }

  @Test("the prefix keeps the sinks, the recent tokens and the best-voted positions in between")
  func prefixFromVotes() {
    let n = 100
    let group = 2
    var votes = [Float](repeating: 0, count: group * n)
    // Head 0 votes for 40, head 1 for 70 (each spread by the pool), nobody for the rest.
    votes[40] = 10
    votes[n + 70] = 8
    let prefix = HeteroCacheDecodeState.compressedPrefix(
      votes: votes, groupSize: group, prefillTokens: n, cap: 12, poolWidth: 3, sinks: 2,
      recent: 4)
    #expect(prefix.count == 12)
    #expect(prefix == prefix.sorted())
    #expect(Array(prefix.prefix(2)) == [0, 1])
    #expect(Array(prefix.suffix(4)) == [96, 97, 98, 99])
    for p in [39, 40, 41, 69, 70, 71] { #expect(prefix.contains(p), "position \(p)") }
    // The votes of several rows add up.
    #expect(HeteroCacheDecodeState.votes([[1, 2], [3, 4]]) == [4, 6])
    let seed = HeteroCacheDecodeState.seedMass(votes: votes, groupSize: group, positions: [40, 70])
    #expect(seed == [10, 8])
  }

  @Test("a recalling head asks the tier only for the selected tokens its cache lacks")
  func selectionExcludingHeld() throws {
    let scores: [Float] = [5, 1, 4, 0, 3, 2, 6, -1]
    let selection = try TauMassSelection.select(scores: scores[...], tau: 0.999)
    let missing = selection.excluding([0, 2, 3, 7])
    #expect(missing.indices == selection.indices.filter { ![0, 2, 3, 7].contains($0) })
    #expect(missing.weights.count == missing.indices.count)
    #expect(missing.keptMass == selection.keptMass)
    #expect(selection.excluding([]).indices == selection.indices)
  }
}
