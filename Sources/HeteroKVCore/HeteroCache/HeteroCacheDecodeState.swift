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

  /// The prefix a compressed head (anchor or satellite) keeps: the `cap` prefill positions
  /// (of the first `prefillTokens`) its query group attends to most in the last prefill
  /// query's probabilities `[groupSize][length]`, each row pooled over `poolWidth`; ascending.
  public static func compressedPrefix(
    probabilities: [Float], groupSize: Int, prefillTokens n: Int, cap: Int, poolWidth: Int
  ) -> [Int] {
    let ranking = AttentionPattern.groupRanking(
      probabilities, rows: groupSize, poolWidth: poolWidth)
    return AttentionPattern.top(Array(ranking[0..<n]), k: cap).sorted()
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
