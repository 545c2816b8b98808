/// The token budget HeteroCache gives one KV head.
public struct HeadBudget: Sendable, Hashable, Codable {
  public var layer: Int
  public var kvHead: Int
  public var role: HeadRole
  public var stability: Double
  /// Weight ratio r_h (mean 1 over compressed heads); 0 for full-context heads.
  public var ratio: Double
  /// Tokens the head keeps resident: its compressed cache size, or the whole prefill for
  /// full-context heads.
  public var cap: Int

  public init(layer: Int, kvHead: Int, role: HeadRole, stability: Double, ratio: Double, cap: Int) {
    self.layer = layer
    self.kvHead = kvHead
    self.role = role
    self.stability = stability
    self.ratio = ratio
    self.cap = cap
  }
}

/// HeteroCache's budget rule. With N heads, F of them full-context, memory ratio rho and n
/// prefill tokens: B = floor((rho·N − F·cost)·n / (N − F)); weights w_h = 1/(stability_h +
/// 1e-6) normalised to mean 1 over all compressed heads of all layers; cap_h = min(floor(B·r_h),
/// n). `cost` is what a full head costs the worker as a share of fp16 K+V: 1 in the paper
/// (full heads on the GPU), the key-code share in HeteroKV (their K/V live on memory nodes).
public enum BudgetAllocator {
  /// Allocates budgets for the profiled heads of every layer.
  ///
  /// `minimumCap` (ours, 0 in the paper's rule) keeps very stable heads from being squeezed to a
  /// handful of tokens when unstable heads take most of the weight. `compressedHeadCost` is what
  /// a compressed head holds besides its cache (its key codes, when it recalls).
  public static func allocate(
    profiles: [HeadProfile], memoryRatio: Double, prefillTokens n: Int, fullHeadCost: Double = 1,
    minimumCap: Int = 0, compressedHeadCost: Double = 0
  ) throws -> [HeadBudget] {
    guard memoryRatio > 0, memoryRatio <= 1 else {
      throw HeteroKVError.invalid("memory ratio must be in (0, 1], got \(memoryRatio)")
    }
    guard n > 0 else { throw HeteroKVError(.emptyContext, "budgets for 0 prefill tokens") }
    guard fullHeadCost >= 0, fullHeadCost <= 1 else {
      throw HeteroKVError.invalid("full-head cost must be in [0, 1], got \(fullHeadCost)")
    }
    let total = profiles.count
    let full = profiles.filter { $0.role.keepsFullContext }.count
    let compressed = total - full
    var base = 0
    if compressed > 0 {
      let share =
        memoryRatio * Double(total) - Double(full) * fullHeadCost
        - Double(compressed) * compressedHeadCost
      guard share > 0 else {
        throw HeteroKVError.unsupported(
          "memory ratio \(memoryRatio) cannot hold \(full) full-context heads of \(total) "
            + (compressedHeadCost > 0 ? "and the codes of \(compressed) compressed ones " : "")
            + "(they alone need "
            + "\((Double(full) * fullHeadCost + Double(compressed) * compressedHeadCost) / Double(total)))"
        )
      }
      base = Int((share * Double(n) / Double(compressed)).rounded(.down))
    }
    let weights = profiles.map { $0.role.keepsFullContext ? 0 : 1 / ($0.stability + 1e-6) }
    let meanWeight = compressed > 0 ? weights.reduce(0, +) / Double(compressed) : 1
    return profiles.enumerated().map { i, p in
      if p.role.keepsFullContext {
        return HeadBudget(
          layer: p.layer, kvHead: p.kvHead, role: p.role, stability: p.stability, ratio: 0,
          cap: n)
      }
      let r = weights[i] / meanWeight
      let cap = min(max(Int((Double(base) * r).rounded(.down)), minimumCap), n)
      return HeadBudget(
        layer: p.layer, kvHead: p.kvHead, role: p.role, stability: p.stability, ratio: r, cap: cap)
    }
  }
}
