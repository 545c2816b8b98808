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
  /// One HeteroKV configuration to compare: a cluster started in this process for the run,
  /// or the worker of a running cluster.
  public struct Policy: Sendable {
    /// The name in reports.
    public var name: String
    /// Where the sequence lives.
    public var target: Target
    /// Head profiles calibrated offline (`calibrateProfiles`), given at CreateSequence; nil
    /// lets the worker profile heads from the prompt's last queries.
    public var profiles: [HeadProfile]?
    /// Whether an in-process cluster serves its worker without sockets
    /// (``LocalCluster/Options/colocatedDataPlane``); off, over loopback TCP.
    public var colocatedDataPlane = false

    public enum Target: Sendable {
      /// An in-process cluster with these budgets, worker settings and output mode.
      case local(BudgetSettings, WorkerSettings, HCAttentionOutputMode)
      /// A running worker's engine API (its cluster file sets the policy).
      case remote(EngineClient)
    }

    /// A policy on its own in-process cluster.
    public init(
      name: String, budgets: BudgetSettings, worker: WorkerSettings = WorkerSettings(),
      outputMode: HCAttentionOutputMode = .exact
    ) {
      self.name = name
      target = .local(budgets, worker, outputMode)
    }

    /// The policy of a running cluster, through its worker's engine API.
    public init(name: String, engine: EngineClient) {
      self.name = name
      target = .remote(engine)
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
    /// Decode tokens per second of this cache over the steps after the first (steady state).
    public var decodeTokensPerSecond: Double
    /// The first decode step's seconds: for a HeteroKV policy it ends the prefill (rows
    /// flushed to the memory tier, head profiles, budgets, codebooks), so it is reported
    /// apart from the steady rate.
    public var firstStepSeconds: Double = 0
    /// The steady steps' cache time by phase (HeteroKV policies; zero for the full cache).
    public var breakdown = DecodeBreakdown()
    /// Mean share of the context a query head's decode step attended (1 for the full cache).
    public var keptShare: Double
    /// Mean bytes a decode step moved between the worker and the memory nodes (0 for the
    /// full cache, which moves nothing).
    public var decodeBytesPerStep: Double
  }

  /// The full cache's run (first) and each policy's, with the shared prefill's time.
  public struct Result: Sendable {
    public var runs: [Run]
    public var fedTokens: [Int]
    public var prefillSeconds: Double
  }

  public let model: LlamaModel
  public var prefillChunk = 512
  /// Decode steps each cache takes in its turn (at least 1): the caches alternate, so that a
  /// noisy machine's slow seconds fall on each alike. A turn ends when the cache's background
  /// work (rows shipped to the memory tier, satellite refreshes) has, and that wait is the
  /// cache's time, so none of its work is charged to the next cache.
  public var turnSteps = 16 {
    didSet { precondition(turnSteps > 0, "turnSteps must be at least 1") }
  }

  public init(model: LlamaModel) { self.model = model }

  /// Head profiles the way HeteroCache calibrates them offline: the model runs `prompt` on a
  /// recording cache and is fed `decode` (the text's next tokens); full attention of the
  /// prompt's last query and of each decode query gives every head's stability and its
  /// similarity to the others of its layer.
  public func calibrateProfiles(
    prompt: [Int], decode: [Int], configuration: HeteroCacheConfiguration
  ) async throws -> [HeadProfile] {
    precondition(!prompt.isEmpty && !decode.isEmpty)
    var recording = RecordingKVCache(configuration: model.configuration)
    _ = try await model.prefill(prompt, cache: &recording, chunk: prefillChunk)
    for (i, token) in decode.enumerated() {
      _ = try await model.forward([token], start: prompt.count + i, cache: &recording)
    }
    return try HeteroCacheCalibration.profile(
      try recording.workload(name: "calibration"), configuration: configuration)
  }

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
    var opened: [OpenCache] = []
    do {
      let result = try await compare(
        prompt: prompt, continuation: continuation, steps: steps, policies: policies,
        opened: &opened, logger: logger)
      for sequence in opened { await sequence.close() }
      return result
    } catch {
      for sequence in opened { await sequence.close() }
      throw error
    }
  }

  /// One HeteroKV cache's decode so far: its latest logits, each step's top choice and KL
  /// divergence from the full cache, and its forward time.
  struct Lane {
    var cache: EngineKVCache
    var logits: [Float]
    var top: [Int] = []
    var kl: [Double] = []
    var firstStep = 0.0
    var steady = Duration.zero
  }

  /// What a policy's sequence reports after decoding.
  struct Figures: Sendable {
    var worker, full: Int
    var keptShare, decodeBytesPerStep: Double
  }

  /// A sequence opened for one policy: its cache, its figures and how to let it go.
  struct OpenCache {
    var cache: EngineKVCache
    /// Worker-resident bytes, the fp16 K/V they stand for, the kept share and decode bytes.
    var stats: @Sendable () async throws -> Figures
    /// Waits for the background work its steps started (nothing for a remote engine, whose
    /// background runs in its own process).
    var settle: @Sendable () async throws -> Void
    var close: @Sendable () async -> Void
  }

  private func open(_ policy: Policy, maxTokens: Int, logger: Logger) async throws
    -> OpenCache
  {
    let c = model.configuration
    switch policy.target {
    case .local(let budgets, let worker, let outputMode):
      var options = LocalCluster.Options(model: try c.geometry, sequenceTokens: maxTokens)
      options.budgets = budgets.chargingKeyCodes(
        of: worker, headDim: try c.geometry.headDim, tokens: maxTokens,
        heldRows: WorkerOptions.defaultDecodeShipRows)
      options.worker = worker
      options.outputMode = outputMode
      options.colocatedDataPlane = policy.colocatedDataPlane
      let cluster = try await LocalCluster.start(options, logger: logger)
      let ref = SequenceRef(sequence: 1)
      do {
        _ = try await cluster.worker.createSequence(
          ref, maxTokens: maxTokens, profiles: policy.profiles)
      } catch {
        await cluster.shutdown()
        throw error
      }
      return OpenCache(
        cache: EngineKVCache(engine: cluster.worker, ref: ref, configuration: c),
        stats: {
          let s = try await cluster.worker.stats(ref)
          return Figures(
            worker: s.workerBytes, full: s.fullKVBytes, keptShare: s.keptShare,
            decodeBytesPerStep: s.decodeBytesPerStep)
        },
        settle: { try await cluster.worker.settle(ref) },
        close: { await cluster.shutdown() })
    case .remote(let engine):
      let ref = SequenceRef(sequence: UInt64.random(in: 1...(1 << 40)))
      _ = try await engine.createSequence(ref, maxTokens: maxTokens, profiles: policy.profiles)
      return OpenCache(
        cache: EngineKVCache(engine: engine, ref: ref, configuration: c),
        stats: {
          let s = try await engine.stats(ref)
          return Figures(
            worker: s.workerBytes, full: s.fullKVBytes,
            keptShare: s.keptShare, decodeBytesPerStep: s.decodeBytesPerStep)
        },
        settle: {},
        close: { _ = try? await engine.release(ref) })
    }
  }

  private func compare(
    prompt: [Int], continuation: Continuation, steps: Int, policies: [Policy],
    opened: inout [OpenCache], logger: Logger
  ) async throws -> Result {
    let c = model.configuration
    for policy in policies {
      opened.append(try await open(policy, maxTokens: prompt.count + steps + 1, logger: logger))
    }
    let followers = opened.map(\.cache)
    let clock = ContinuousClock()
    var shared = SharedPrefillCache(primary: FullKVCache(configuration: c), followers: followers)
    let started = clock.now
    let first = try await model.prefill(prompt, cache: &shared, chunk: prefillChunk)
    let prefillSeconds = (clock.now - started).inSeconds

    // The caches take turns, `turnSteps` steps each (the full cache first: its logits at
    // every step are the reference, its choices the greedy tokens), so that the machine's
    // slow and fast seconds fall on every cache alike; a cache's rate is its steady steps'
    // own forward time (steps after the first, which seals a HeteroKV sequence) plus the wait
    // for the background work its turn left (argmax and KL, the same for all, are not timed).
    var full = shared.primary
    var reference = [first]
    var fed: [Int] = []
    var fullFirst = 0.0
    var fullSteady = Duration.zero
    var lanes = shared.followers.map { Lane(cache: $0, logits: first) }
    for turn in stride(from: 0, to: steps, by: turnSteps) {
      let turnEnd = min(steps, turn + turnSteps)
      for step in turn..<turnEnd {
        let next: Int
        switch continuation {
        case .greedy: next = NextTokenDistance.argmax(reference[step])
        case .forced(let tokens): next = tokens[step]
        }
        fed.append(next)
        guard step + 1 < steps else { continue }
        let t0 = clock.now
        reference.append(try await model.forward([next], start: prompt.count + step, cache: &full))
        if step == 0 {
          fullFirst = (clock.now - t0).inSeconds
        } else {
          fullSteady += clock.now - t0
        }
      }
      for i in lanes.indices {
        for step in turn..<turnEnd {
          lanes[i].top.append(NextTokenDistance.argmax(lanes[i].logits))
          lanes[i].kl.append(NextTokenDistance.klDivergence(reference[step], lanes[i].logits))
          guard step + 1 < steps else { continue }
          let t0 = clock.now
          lanes[i].logits = try await model.forward(
            [fed[step]], start: prompt.count + step, cache: &lanes[i].cache)
          if step == 0 {
            lanes[i].firstStep = (clock.now - t0).inSeconds
            lanes[i].cache.resetDecodeBreakdown()
          } else {
            lanes[i].steady += clock.now - t0
          }
        }
        let t0 = clock.now
        try await opened[i].settle()
        if turnEnd > 1 { lanes[i].steady += clock.now - t0 }
      }
    }
    func steadyRate(_ time: Duration) -> Double {
      steps > 2 ? Double(steps - 2) / max(1e-9, time.inSeconds) : 0
    }
    let fullBytes = c.layers * c.kvHeads * c.headDim * 4 * (prompt.count + steps - 1)
    var runs = [
      Run(
        policy: "full", topTokens: reference.map(NextTokenDistance.argmax), meanKL: 0, maxKL: 0,
        top1Agreement: 1, workerBytes: fullBytes, fullKVBytes: fullBytes,
        decodeTokensPerSecond: steadyRate(fullSteady), firstStepSeconds: fullFirst,
        keptShare: 1, decodeBytesPerStep: 0)
    ]
    for (i, policy) in policies.enumerated() {
      let lane = lanes[i]
      let stats = try await opened[i].stats()
      runs.append(
        Run(
          policy: policy.name, topTokens: lane.top, meanKL: lane.kl.reduce(0, +) / Double(steps),
          maxKL: lane.kl.max() ?? 0,
          top1Agreement: Double(zip(lane.top, runs[0].topTokens).filter { $0 == $1 }.count)
            / Double(steps),
          workerBytes: stats.worker, fullKVBytes: stats.full,
          decodeTokensPerSecond: steadyRate(lane.steady), firstStepSeconds: lane.firstStep,
          breakdown: lane.cache.decodeBreakdown, keptShare: stats.keptShare,
          decodeBytesPerStep: stats.decodeBytesPerStep))
    }
    return Result(runs: runs, fedTokens: fed, prefillSeconds: prefillSeconds)
  }
}
