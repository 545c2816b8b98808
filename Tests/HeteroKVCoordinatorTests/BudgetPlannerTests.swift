import HeteroKVConfig
import HeteroKVCore
import Testing

@testable import HeteroKVCoordinator

@Suite("Budget planner")
struct BudgetPlannerTests {
  @Test(
    "HeteroCache: compressed caps sum to the policy's total, favour unstable heads, and full heads keep the context"
  )
  func heterocache() throws {
    let profiles = testProfiles()
    var settings = BudgetSettings(policy: .heterocache, memoryFraction: 0.3, minTokens: 16)
    // Static caches (the paper's rule); recall, on by default, is the suite below.
    settings.recall = false
    #expect(BudgetSettings(policy: .heterocache, memoryFraction: 0.3).recall)
    let n = 10_000
    let plan = try BudgetPlanner.plan(profiles: profiles, prefillTokens: n, settings: settings)
    // 8 heads, 4 full (pivot, volatile) at cost 0.125: (0.3*8 - 4*0.125) * n.
    let expected = Int(((0.3 * 8 - 4 * 0.125) * Double(n)).rounded(.down))
    #expect(plan.totalTokens == expected)
    let compressed = plan.heads.filter { !$0.role.keepsFullContext }
    #expect(compressed.map(\.cap).reduce(0, +) == expected)
    #expect(plan.heads.filter { $0.role.keepsFullContext }.allSatisfy { $0.cap == n })
    // Satellite (stability 0.3) gets more than the anchor (0.9) of its layer.
    let layer0 = plan.heads.filter { $0.layer == 0 }
    #expect(layer0[1].cap > layer0[2].cap)
    #expect(compressed.allSatisfy { (16...n).contains($0.cap) })
  }

  @Test("bounds hold and the total is kept whatever the weights, over random profiles")
  func bounds() throws {
    var random = SeededGenerator(seed: 7)
    for trial in 0..<300 {
      let heads = Int.random(in: 1...64, using: &random)
      let weights = (0..<heads).map { _ in Double.random(in: 0.001...1, using: &random) }
      let lower = Int.random(in: 0...50, using: &random)
      let upper = lower + Int.random(in: 0...5000, using: &random)
      let total = Int.random(in: (lower * heads)...(upper * heads), using: &random)
      let caps = BudgetPlanner.apportion(total: total, weights: weights, lower: lower, upper: upper)
      #expect(caps.reduce(0, +) == total, "trial \(trial)")
      #expect(caps.allSatisfy { (lower...upper).contains($0) }, "trial \(trial)")
    }
  }

  @Test("policies: uniform gives equal caps; max_tokens pins and the rest is shared again")
  func policies() throws {
    let profiles = testProfiles()
    let uniform = try BudgetPlanner.plan(
      profiles: profiles, prefillTokens: 1000,
      settings: BudgetSettings(policy: .uniform, memoryFraction: 0.25, minTokens: 0))
    #expect(Set(uniform.heads.map(\.cap)) == [250])
    #expect(uniform.totalTokens == 2000)
    var pinned = BudgetSettings(
      policy: .heterocache, memoryFraction: 0.3, minTokens: 100, maxTokens: 6000)
    pinned.recall = false
    let capped = try BudgetPlanner.plan(
      profiles: profiles, prefillTokens: 10_000, settings: pinned)
    let compressed = capped.heads.filter { !$0.role.keepsFullContext }
    #expect(compressed.map(\.cap).max() == 6000)
    #expect(compressed.map(\.cap).reduce(0, +) == capped.totalTokens)
  }

  @Test(
    "a memory fraction that cannot pay for the full-context heads at this length gives the compressed heads their floor and names why"
  )
  func shortfall() throws {
    let plan = try BudgetPlanner.plan(
      profiles: testProfiles(), prefillTokens: 100,
      settings: BudgetSettings(
        policy: .heterocache, memoryFraction: 0.05, minTokens: 16, fullHeadCost: 0.5))
    let compressed = plan.heads.filter { !$0.role.keepsFullContext }
    #expect(compressed.allSatisfy { $0.cap == 16 })
    #expect(plan.totalTokens == 16 * compressed.count)
    #expect(plan.heads.filter { $0.role.keepsFullContext }.allSatisfy { $0.cap == 100 })
    #expect(plan.shortfall?.contains("memory_fraction 0.05") == true)
    // A fraction that pays has no shortfall.
    let paid = try BudgetPlanner.plan(
      profiles: testProfiles(), prefillTokens: 100,
      settings: BudgetSettings(policy: .heterocache, memoryFraction: 0.5, fullHeadCost: 0.125))
    #expect(paid.shortfall == nil)
  }

  @Test("a prompt shorter than min_tokens keeps its whole context on every head, at every policy")
  func shortPrompt() throws {
    for policy in BudgetPolicyKind.allCases {
      // Five tokens at 12.5% with the coded heads charged everything they hold (cost 1): the
      // shape `hkv generate` plans for a five-token prompt.
      let plan = try BudgetPlanner.plan(
        profiles: testProfiles(), prefillTokens: 5,
        settings: BudgetSettings(policy: policy, memoryFraction: 0.125, fullHeadCost: 1))
      #expect(plan.heads.allSatisfy { $0.cap == 5 }, "\(policy)")
    }
  }
}

@Suite("Budget planner with recall")
struct RecallBudgetTests {
  @Test("with recall the compressed heads' key codes are charged too: fewer slots, same rule")
  func recallChargesCompressedHeads() throws {
    let profiles = testProfiles()
    var settings = BudgetSettings(
      policy: .heterocache, memoryFraction: 0.5, minTokens: 0, fullHeadCost: 0.25)
    settings.recall = false
    let plain = try BudgetPlanner.plan(profiles: profiles, prefillTokens: 1000, settings: settings)
    settings.recall = true
    let recalled = try BudgetPlanner.plan(
      profiles: profiles, prefillTokens: 1000, settings: settings)
    // 8 heads, 4 of them full: (0.5·8 − 4·0.25)·1000 = 3000 slots plain; (0.5 − 0.25)·8·1000 =
    // 2000 with the 4 compressed heads' codes charged.
    #expect(plain.totalTokens == 3000)
    #expect(recalled.totalTokens == 2000)
    #expect(recalled.heads.map(\.role) == plain.heads.map(\.role))
    settings.memoryFraction = 0.25
    let unpaid = try BudgetPlanner.plan(
      profiles: profiles, prefillTokens: 1000, settings: settings)
    #expect(unpaid.shortfall?.contains("budgets.recall") == true)
  }
}

@Suite("In-process planning charges the codes the worker builds")
struct ChargingKeyCodesTests {
  @Test(
    "recall sizes the codes to the fraction where the sized codes fit; below that, static caches charged the configured codes"
  )
  func chargesWhatTheWorkerHolds() {
    let worker = WorkerSettings()
    var budgets = BudgetSettings(policy: .heterocache, memoryFraction: 0.0625, minTokens: 16)
    budgets.recall = true
    let sized = budgets.chargingKeyCodes(of: worker, headDim: 64, tokens: 8000, heldRows: 32)
    #expect(sized.recall && sized.fullHeadCost < 0.0625, "\(sized.fullHeadCost)")
    let configured = worker.keyCodeShare(headDim: 64, tokens: 8000) + 32.0 / 8000
    #expect(sized.fullHeadCost < configured)
    budgets.memoryFraction = 0.01
    let tiny = budgets.chargingKeyCodes(of: worker, headDim: 64, tokens: 8000, heldRows: 32)
    #expect(!tiny.recall)
    #expect(abs(tiny.fullHeadCost - configured) < 1e-12, "\(tiny.fullHeadCost) vs \(configured)")
  }
}
