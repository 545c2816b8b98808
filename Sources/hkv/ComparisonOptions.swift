import ArgumentParser
import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster

/// The cache policies `hkv needle` and `hkv fidelity` compare, and the knobs of the HeteroKV
/// clusters they start in this process.
struct ComparisonOptions: ParsableArguments {
  @Option(
    name: .customLong("policies"),
    help: "Policies: full, heterocache, hcattention, uniform; comma-separated.")
  var policyNames: String = "full,heterocache,hcattention"

  @Option(help: "Memory budget of the HeteroKV policies (share of fp16 K/V on the worker).")
  var budget: Double = 0.125

  @Option(help: "Share of the approximate attention mass the kept tokens must hold.")
  var tau: Double = WorkerSettings().tau

  @Option(help: "Most recent tokens every head keeps exactly.")
  var window: Int = WorkerSettings().window

  @Option(help: "First tokens (attention sinks) every head keeps exactly.")
  var sinks: Int = WorkerSettings().sinks

  @Option(help: "Key codec on the worker: pq or scalar.")
  var keyCodec: String = "pq"

  @Option(help: "Bits per key code: 8 for pq, 2, 4 or 8 for scalar.")
  var keyBits: Int = 8

  @Option(help: "Head dimensions per key code (pq: one 8-bit code per group).")
  var groupSize: Int = WorkerSettings().groupSize

  @Option(
    help:
      "How memory nodes weight kept tokens: exact (re-scored with full keys) or renormalized.")
  var outputMode: String = "exact"

  /// Whether the full cache is reported, and the HeteroKV policies to run.
  func resolved() throws -> (includeFull: Bool, [CachePolicyComparison.Policy]) {
    let names = policyNames.split(separator: ",").map(String.init)
    guard !names.isEmpty else { throw ValidationError("--policies: give at least one") }
    guard budget > 0, budget <= 1 else { throw ValidationError("--budget must be in (0, 1]") }
    guard tau > 0, tau <= 1 else { throw ValidationError("--tau must be in (0, 1]") }
    guard window >= 0, sinks >= 0 else {
      throw ValidationError("--window and --sinks must not be negative")
    }
    guard let codec = KeyCodecKind(rawValue: keyCodec) else {
      throw ValidationError("bad --key-codec '\(keyCodec)': expected pq or scalar")
    }
    guard let mode = HCAttentionOutputMode(rawValue: outputMode), mode != .raw else {
      throw ValidationError("bad --output-mode '\(outputMode)': expected exact or renormalized")
    }
    let worker = WorkerSettings(
      keyCodec: codec, keyBits: keyBits, groupSize: groupSize, window: window, sinks: sinks,
      tau: tau)
    var chosen: [CachePolicyComparison.Policy] = []
    for name in names where name != "full" {
      guard let kind = BudgetPolicyKind(rawValue: name) else {
        throw ValidationError(
          "bad policy '\(name)': expected full, heterocache, hcattention or uniform")
      }
      chosen.append(
        CachePolicyComparison.Policy(
          name: name,
          budgets: BudgetSettings(policy: kind, memoryFraction: budget, minTokens: 16),
          worker: worker, outputMode: mode))
    }
    return (names.contains("full"), chosen)
  }
}
