import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVModel
import HeteroKVWorker
import Logging

/// A model's next-token distributions on HeteroKV policies against the full cache, on one
/// prompt: the prompt is run once (its attention is exact on every cache, so one prefill feeds
/// all), then each cache decodes the same tokens and every step's logits are compared with the
/// full cache's. This is what `hkv needle` and `hkv fidelity` measure.
public struct CachePolicyComparison: Sendable {
  /// One HeteroKV configuration to compare, run on its own in-process cluster.
  public struct Policy: Sendable {
    /// The name in reports.
    public var name: String
    /// The budget rule and memory fraction.
    public var budgets: BudgetSettings
    /// Key codec, window, sinks and tau of the worker.
    public var worker: WorkerSettings
    /// How memory nodes weight the kept tokens.
    public var outputMode: HCAttentionOutputMode

    public init(
      name: String, budgets: BudgetSettings, worker: WorkerSettings = WorkerSettings(),
      outputMode: HCAttentionOutputMode = .exact
    ) {
      self.name = name
      self.budgets = budgets
      self.worker = worker
      self.outputMode = outputMode
    }
  }

  /// The tokens fed after the prompt.
  public enum Continuation: Sendable {
    /// The full cache's own greedy choices, `steps` of them (every policy is fed the same).
    case greedy(steps: Int)
    /// Given tokens (real text), teacher-forced.
    case forced([Int])
  }

  /// What one cache did over the decode steps.
  public struct Run: Sendable {
    public var policy: String
    /// The cache's top choice at each step.
    public var topTokens: [Int]
    /// Mean KL divergence from the full cache's distribution (0 for the full cache).
    public var meanKL: Double
    /// Largest KL divergence of a step.
    public var maxKL: Double
    /// Share of steps whose top choice is the full cache's.
    public var top1Agreement: Double
    /// Worker-resident bytes and the fp16 K/V they stand for (equal for the full cache).
    public var workerBytes: Int
    public var fullKVBytes: Int
    /// Decode tokens per second of this cache.
    public var decodeTokensPerSecond: Double
  }

  /// The full cache's run (first) and each policy's, with the shared prefill's time.
  public struct Result: Sendable {
    public var runs: [Run]
    public var fedTokens: [Int]
    public var prefillSeconds: Double
  }

  public let model: LlamaModel
  public var prefillChunk = 512

  public init(model: LlamaModel) { self.model = model }

  /// Runs `prompt` then `continuation` on the full cache and on each of `policies`.
  public func run(
    prompt: [Int], continuation: Continuation, policies: [Policy],
    logger: Logger = Logger(label: "heterokv.comparison")
  ) async throws -> Result {
    let steps: Int
    switch continuation {
    case .greedy(let n): steps = n
    case .forced(let tokens): steps = tokens.count
    }
    precondition(steps > 0 && !prompt.isEmpty)
    var clusters: [LocalCluster] = []
    do {
      let result = try await compare(
        prompt: prompt, continuation: continuation, steps: steps, policies: policies,
        clusters: &clusters, logger: logger)
      for cluster in clusters { await cluster.shutdown() }
      return result
    } catch {
      for cluster in clusters { await cluster.shutdown() }
      throw error
    }
  }

  private func compare(
    prompt: [Int], continuation: Continuation, steps: Int, policies: [Policy],
    clusters: inout [LocalCluster], logger: Logger
  ) async throws -> Result {
    let c = model.configuration
    var followers: [EngineKVCache] = []
    let ref = SequenceRef(sequence: 1)
    for policy in policies {
      var options = LocalCluster.Options(model: try c.geometry)
      let tokens = prompt.count + steps + 1
      options.capacityBytes = max(256 << 20, tokens * c.layers * c.kvHeads * c.headDim * 4 * 2)
      options.budgets = policy.budgets
      options.worker = policy.worker
      options.outputMode = policy.outputMode
      let cluster = try await LocalCluster.start(options, logger: logger)
      clusters.append(cluster)
      _ = try await cluster.worker.createSequence(ref, maxTokens: tokens)
      followers.append(EngineKVCache(engine: cluster.worker, ref: ref, configuration: c))
    }
    let clock = ContinuousClock()
    var shared = SharedPrefillCache(primary: FullKVCache(configuration: c), followers: followers)
    var started = clock.now
    let first = try await model.prefill(prompt, cache: &shared, chunk: prefillChunk)
    let prefillSeconds = (clock.now - started).seconds

    // The full cache: its logits at every step are the reference.
    var full = shared.primary
    var reference = [first]
    var fed: [Int] = []
    started = clock.now
    for step in 0..<steps {
      let next: Int
      switch continuation {
      case .greedy: next = NextTokenDistance.argmax(reference[step])
      case .forced(let tokens): next = tokens[step]
      }
      fed.append(next)
      if step + 1 < steps {
        reference.append(try await model.forward([next], start: prompt.count + step, cache: &full))
      }
    }
    let fullBytes = c.layers * c.kvHeads * c.headDim * 4 * (prompt.count + steps - 1)
    var runs = [
      Run(
        policy: "full", topTokens: reference.map(NextTokenDistance.argmax), meanKL: 0, maxKL: 0,
        top1Agreement: 1, workerBytes: fullBytes, fullKVBytes: fullBytes,
        decodeTokensPerSecond: Double(steps - 1) / max(1e-9, (clock.now - started).seconds))
    ]
    for (i, policy) in policies.enumerated() {
      var cache = shared.followers[i]
      var logits = first
      var top: [Int] = []
      var kl: [Double] = []
      started = clock.now
      for step in 0..<steps {
        top.append(NextTokenDistance.argmax(logits))
        kl.append(NextTokenDistance.klDivergence(reference[step], logits))
        if step + 1 < steps {
          logits = try await model.forward([fed[step]], start: prompt.count + step, cache: &cache)
        }
      }
      let seconds = (clock.now - started).seconds
      let stats = try await clusters[i].worker.stats(ref)
      runs.append(
        Run(
          policy: policy.name, topTokens: top, meanKL: kl.reduce(0, +) / Double(steps),
          maxKL: kl.max() ?? 0,
          top1Agreement: Double(zip(top, runs[0].topTokens).filter { $0 == $1 }.count)
            / Double(steps),
          workerBytes: stats.workerBytes, fullKVBytes: stats.fullKVBytes,
          decodeTokensPerSecond: Double(steps - 1) / max(1e-9, seconds)))
    }
    return Result(runs: runs, fedTokens: fed, prefillSeconds: prefillSeconds)
  }
}

extension Duration {
  var seconds: Double {
    let (s, atto) = components
    return Double(s) + Double(atto) * 1e-18
  }
}
