import HeteroKVSettings
import HeteroKVCore

/// The budgets of one sequence: a token cap per KV head and what the policy allowed in all.
public struct SequenceBudgetPlan: Sendable, Hashable, Codable {
  /// One entry per profiled head, in (layer, KV head) order.
  public var heads: [HeadBudget]
  /// The policy's total for the compressed heads: the sum of their caps.
  public var totalTokens: Int
  /// Why the memory fraction could not be met at this prefill length, where it could not: the
  /// fixed costs of the coded heads (key codes, rows held before shipping) outweigh a short
  /// context's share, so the compressed heads were given their floor instead of a refusal.
  public var shortfall: String?

  /// A plan of `heads` whose compressed caps sum to `totalTokens`.
  public init(heads: [HeadBudget], totalTokens: Int, shortfall: String? = nil) {
    self.heads = heads
    self.totalTokens = totalTokens
    self.shortfall = shortfall
  }
}

/// Turns a sequence's head profiles into per-head token caps under the cluster's budget policy.
///
/// The policy fixes a total of token slots, T = floor((ρ·N − F·c)·n) for HeteroCache (N heads,
/// F of them full-context at cost c each, memory fraction ρ, n prefill tokens; with recall the
/// compressed heads' key codes cost c as well, T = floor((ρ − c)·N·n)) and floor(ρ·N·n)
/// for the uniform and HCAttention policies. T is shared among the compressed heads in
/// proportion to their weights (1/stability for HeteroCache, equal otherwise) with every cap
/// held in [min_tokens, max_tokens] (both capped by n): shares that cross a bound are pinned to
/// it and the rest is shared again among the others, and whole tokens are handed out by largest
/// remainder, so the caps sum to T exactly. Where the bounds make T unreachable (N·min > T or
/// N·max < T), T is moved to the nearest reachable total and the plan says so through
/// `totalTokens`. Where the coded heads alone cost more than the fraction at this length (a
/// short prompt, whose rows held before shipping and whose key codes are a large share of a few
/// tokens), the compressed heads get their floor and the plan's `shortfall` says why: a short
/// context is served, never refused, at every budget and policy.
public enum BudgetPlanner {
  /// The plan for `profiles` after a prefill of `prefillTokens`.
  public static func plan(
    profiles: [HeadProfile], prefillTokens n: Int, settings: BudgetSettings
  ) throws(HeteroKVError) -> SequenceBudgetPlan {
    guard n > 0 else { throw .invalid("prefill_tokens must be positive") }
    guard !profiles.isEmpty else { throw .invalid("no head profiles were reported") }
    let fullHeads =
      settings.policy == .heterocache ? profiles.filter { $0.role.keepsFullContext } : []
    let compressed = profiles.indices.filter {
      settings.policy != .heterocache || !profiles[$0].role.keepsFullContext
    }
    let recalls = settings.policy == .heterocache && settings.recall
    let codedHeads = fullHeads.count + (recalls ? compressed.count : 0)
    let slots =
      settings.memoryFraction * Double(profiles.count) - Double(codedHeads)
      * settings.fullHeadCost
    let lower = min(settings.minTokens, n)
    let upper = min(settings.maxTokens ?? n, n)
    let wanted = Int((max(slots, 0) * Double(n)).rounded(.down))
    let total = min(max(wanted, lower * compressed.count), upper * compressed.count)
    let shortfall: String? =
      !compressed.isEmpty && slots <= 0
      ? "memory_fraction \(settings.memoryFraction) cannot pay for the key codes of "
        + "\(codedHeads) heads of \(profiles.count) at full_head_cost \(settings.fullHeadCost)"
        + (recalls ? " (budgets.recall codes the compressed heads too)" : "")
        + " at \(n) tokens: the compressed heads keep min_tokens (\(lower)) each"
      : nil
    let weights = compressed.map { i in
      settings.policy == .heterocache ? 1 / (profiles[i].stability + 1e-6) : 1
    }
    let caps = apportion(total: total, weights: weights, lower: lower, upper: upper)
    var heads = profiles.map { p in
      HeadBudget(
        layer: p.layer, kvHead: p.kvHead, role: p.role, stability: p.stability, ratio: 0, cap: n)
    }
    let meanWeight = weights.isEmpty ? 1 : weights.reduce(0, +) / Double(weights.count)
    for (k, i) in compressed.enumerated() {
      heads[i].cap = caps[k]
      heads[i].ratio = weights[k] / meanWeight
    }
    return SequenceBudgetPlan(heads: heads, totalTokens: total, shortfall: shortfall)
  }

  /// Integer shares of `total` proportional to `weights`, each in `lower...upper`, summing to
  /// `total` (which the caller keeps within `count·lower...count·upper`).
  ///
  /// Water-filling: the share of head i at level λ is clamp(λ·w_i, lower, upper), a sum that
  /// grows with λ; bisection finds the level where it meets `total`, and whole tokens are then
  /// handed out by largest remainder among heads below their upper bound.
  static func apportion(total: Int, weights: [Double], lower: Int, upper: Int) -> [Int] {
    let count = weights.count
    guard count > 0 else { return [] }
    let lo = Double(lower)
    let hi = Double(upper)
    func shares(_ level: Double) -> [Double] { weights.map { min(max(level * $0, lo), hi) } }
    var low = 0.0
    var high = hi / max(weights.min() ?? 1, 1e-12)
    for _ in 0..<200 {
      let mid = (low + high) / 2
      if shares(mid).reduce(0, +) < Double(total) { low = mid } else { high = mid }
    }
    let real = shares(high)
    var caps = real.map { max(lower, min(upper, Int($0.rounded(.down)))) }
    var short = total - caps.reduce(0, +)
    let byRemainder = (0..<count).sorted {
      let a = real[$0] - real[$0].rounded(.down)
      let b = real[$1] - real[$1].rounded(.down)
      return a != b ? a > b : $0 < $1
    }
    while short != 0 {
      var progressed = false
      for i in (short > 0 ? byRemainder : byRemainder.reversed()) where short != 0 {
        if short > 0 && caps[i] < upper {
          caps[i] += 1
          short -= 1
          progressed = true
        } else if short < 0 && caps[i] > lower {
          caps[i] -= 1
          short += 1
          progressed = true
        }
      }
      if !progressed { break }
    }
    return caps
  }
}
