// How HeteroCache turns a sealed prefill into each head's decode state, and a pivot's drift
// into its satellites' new prefixes: one set of rules for the worker and the harness.

/// The rules that build HeteroCache's per-head decode state from a prefill and its budgets.
public enum HeteroCacheDecodeState {
  /// The top-set size a pivot's drift monitor compares at: the mean cap of the compressed
  /// heads, or an eighth of the prefill (at least one token) when every head keeps its full
  /// context.
  public static func driftBudget(compressedCaps: [Int], prefillTokens n: Int) -> Int {
    compressedCaps.isEmpty ? max(1, n / 8) : compressedCaps.reduce(0, +) / compressedCaps.count
  }

  /// The prefix a compressed head (anchor or satellite) keeps, ascending: its first `sinks`
  /// and last `recent` prefill positions, then the prefill positions (of the first
  /// `prefillTokens`) its query group attends to most. `votes` `[groupSize][length]` are the
  /// observation queries' probabilities summed per query head (SnapKV's vote over the end of
  /// the prompt; one row's probabilities are a vote of one); each head's row is pooled over
  /// `poolWidth` and the group's largest taken.
  public static func compressedPrefix(
    votes: [Float], groupSize: Int, prefillTokens n: Int, cap: Int, poolWidth: Int,
    sinks: Int = 0, recent: Int = 0
  ) -> [Int] {
    let cap = min(cap, n)
    let first = min(sinks, cap)
    let last = min(recent, cap - first)
    let ranking = AttentionPattern.groupRanking(votes, rows: groupSize, poolWidth: poolWidth)
    let middle = AttentionPattern.top(Array(ranking[first..<(n - last)]), k: cap - first - last)
    return Array(0..<first) + middle.map { $0 + first } + Array((n - last)..<n)
  }

  /// Recent tokens a compressed head always keeps: the window, at most a quarter of its cap.
  public static func recentTokens(window: Int, cap: Int) -> Int { min(window, cap / 4) }

  /// Holds `cache` (a head's prefix plus `decodedTokens` rows appended after the prefill) to
  /// its budget, a share of the context: `cap` rows at `prefillTokens`, cap/n more a token;
  /// the sinks and the recent tokens protected.
  public static func holdBudget(
    _ cache: inout CompressedHeadCache, cap: Int, prefillTokens n: Int, decodedTokens: Int = 0,
    sinks: Int, window: Int
  ) {
    cache.holdBudget(
      capacity: cap + decodedTokens, growth: Double(cap) / Double(max(1, n)), sinks: sinks,
      recent: recentTokens(window: window, cap: cap))
  }

  /// The observation rows' probabilities (each `[groupSize][length]`) summed: the votes
  /// `compressedPrefix` ranks by.
  public static func votes(_ rows: [[Float]]) -> [Float] {
    guard var total = rows.first else { return [] }
    for row in rows.dropFirst() { for j in 0..<total.count { total[j] += row[j] } }
    return total
  }

  /// The mass each kept position starts its eviction standing with: its votes summed over the
  /// query group.
  public static func seedMass(votes: [Float], groupSize: Int, positions: [Int]) -> [Float] {
    let length = votes.count / groupSize
    return positions.map { j in (0..<groupSize).reduce(0) { $0 + votes[$1 * length + j] } }
  }

  /// A satellite's new prefix after its pivot drifted: the `cap` prefill positions the
  /// pivot's current ranking puts first; ascending.
  public static func refreshedPrefix(drift: PivotDriftMonitor.Drift, prefillTokens n: Int, cap: Int)
    -> [Int]
  {
    AttentionPattern.top(Array(drift.ranking[0..<n]), k: cap).sorted()
  }

  /// The drift monitor of a head: pivots watch their attention, every other role none.
  public static func driftMonitor(
    role: HeadRole, probabilities: [Float], groupSize: Int, budget: Int,
    configuration: HeteroCacheConfiguration
  ) -> PivotDriftMonitor? {
    guard role == .pivot else { return nil }
    return PivotDriftMonitor(
      prefillProbabilities: probabilities, heads: groupSize, budget: budget,
      configuration: configuration)
  }
}

extension AttentionPattern {
  /// Per position, the largest over `rows` query rows of the row's attention pooled over
  /// `poolWidth`: how much a query group as a whole wants each token.
  public static func groupRanking(_ probabilities: [Float], rows: Int, poolWidth: Int)
    -> [Float]
  {
    let n = probabilities.count / rows
    let smoothed = (0..<rows).flatMap {
      smooth(probabilities[$0 * n..<($0 + 1) * n], width: poolWidth)
    }
    return maxOfRows(smoothed, rows: rows)
  }
}

extension PivotDriftMonitor {
  /// On a check step, turns the pivot's approximate scores `[heads][n]` into probabilities
  /// and observes them; the drift when there is one. Other steps cost nothing.
  public mutating func check(step: Int, scores: [Float], heads: Int) -> Drift? {
    guard checks(step: step) else { return nil }
    var p = scores
    _ = Softmax.normalizeRows(&p, heads: heads, n: p.count / heads)
    return observe(step: step, probabilities: p, heads: heads)
  }
}
