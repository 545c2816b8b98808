import Foundation
import HeteroKVConfig
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVEval
import HeteroKVMemoryClient
import HeteroKVWire
import HeteroKVWorker

/// `hkv demo`'s driver: one sequence of a replayed workload through a cluster's engine API
/// (prefill, decode, the figures of the worker, the memory nodes and the coordinator, release),
/// and the baselines on the same workload. The CLI parses, calls and prints.
public enum ClusterDemo {
  /// Room for every row of the sequence, with its copies, spread over the nodes, plus slack.
  public static func capacityPerNode(
    model: ModelGeometry, tokens: Int, steps: Int, replication: Int, memoryNodes: Int
  ) -> Int {
    let rows = (tokens + steps) * model.layers * model.kvHeads * model.headDim * 4 * replication
    return max(256 << 20, rows / memoryNodes * 3 / 2 + (64 << 20))
  }

  /// A 24-cell bar for `done` of `total`.
  public static func bar(_ done: Int, _ total: Int) -> String {
    let filled = total > 0 ? min(24, done * 24 / total) : 0
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: 24 - filled)
      + "]"
  }

  /// StreamingLLM at the run's worker share and full attention, on the same workload, in
  /// this process (the harness of `hkv eval`): what the budget buys, and what it costs.
  public static func baselines(
    _ replay: WorkloadReplay, workerFraction: Double,
    progress: @escaping @Sendable (String) -> Void
  ) throws -> [DemoReport.Comparison] {
    let budget = min(1, max(1e-4, workerFraction))
    let options = try EvalOptions(policies: ["streamingllm", "full"], budgets: [budget])
    let eval = try EvalHarness.run(replay.workload, options: options) {
      progress("baselines: \($0)")
    }
    return eval.rows.filter { $0.status == "ok" }.map { row in
      let steps = Double(replay.decodeSteps)
      return DemoReport.Comparison(
        name: row.policy == "full" ? "full attention" : "\(row.policy) (same worker memory)",
        workerFraction: row.residentFraction ?? (row.policy == "full" ? 1 : budget),
        meanRelativeError: row.relativeL2Error ?? 0, massRecall: row.massRecall ?? 1,
        keptShare: row.keptFraction ?? 1, bytesMovedPerStep: Int(row.bytesMovedPerStep ?? 0),
        decodeStepsPerSecond: row.seconds.map { $0 > 0 ? steps / $0 : 0 })
    }
  }

  /// Creates the sequence, prefills it, decodes, gathers the figures and releases it. The
  /// engine is the in-process worker when given, else the file's worker over gRPC; `security`
  /// is the cluster's control-plane credential.
  public static func run(
    _ cluster: ClusterConfiguration, security: ControlPlaneSecurity, replay: WorkloadReplay,
    ref: SequenceRef, mode: String, profiles: [HeadProfile]?, engine: Worker? = nil,
    progress: @escaping @Sendable (String) -> Void
  ) async throws -> DemoReport {
    guard let coordinators = cluster.coordinator?.controlAddresses else {
      throw HeteroKVError.invalid("the cluster file has no coordinator section")
    }
    let clock = ContinuousClock()
    func run(_ engine: any KVCacheEngine, stats: () async throws -> SequenceFigures)
      async throws -> (Double, WorkloadReplay.DecodeReport, SequenceFigures)
    {
      let started = clock.now
      try await replay.prefill(engine, ref) { done, total in
        progress("prefill  \(bar(done, total)) \(done)/\(total) rows")
      }
      let prefill = (clock.now - started).inSeconds
      let decode = try await replay.decode(engine, ref) { done, total in
        progress("decode   \(bar(done, total)) step \(done)/\(total)")
      }
      return (prefill, decode, try await stats())
    }
    let outcome: (Double, WorkloadReplay.DecodeReport, SequenceFigures)
    let maxTokens = replay.contextLength + replay.decodeSteps
    do {
      if let engine {
        _ = try await engine.createSequence(ref, maxTokens: maxTokens, profiles: profiles)
        outcome = try await run(engine) { SequenceFigures(try await engine.stats(ref)) }
      } else {
        guard let address = cluster.worker.control else {
          throw HeteroKVError.invalid("the cluster file has no worker.control address")
        }
        outcome = try await EngineClient.with(
          address: address, geometry: replay.geometry, security: security, timeout: .seconds(600)
        ) { client in
          _ = try await client.createSequence(ref, maxTokens: maxTokens, profiles: profiles)
          return try await run(client) { SequenceFigures(try await client.stats(ref)) }
        }
      }
    }
    let (prefillSeconds, decode, figures) = outcome
    // What each memory node holds, and the budgets the coordinator assigned.
    // (Waiting out a takeover when the coordinator is replicated and between leaders.)
    let (members, budgets) = try await CoordinatorClient.withLeader(
      among: coordinators, security: security,
      patience: coordinators.count > 1 ? .seconds(30) : .zero
    ) { client in
      (
        try await client.nodes(),
        try await client.budgets(namespace: ref.namespace, sequence: ref.sequence, layer: nil)
      )
    }.result
    // Asked of each node over its data plane: heartbeats report use only every few seconds.
    var nodeBytes: [String: UInt64] = [:]
    for member in members.members where member.role == .memoryNode {
      guard let data = HostPort(member.dataAddress) else { continue }
      let client = MemoryNodeClient(
        endpoint: MemoryNodeEndpoint(
          id: member.memberID, data: data,
          transport: DataPlaneTransportKind(rawValue: member.transport) ?? .tcp),
        connections: 1, credential: security.dataPlaneCredential)
      do {
        nodeBytes[member.memberID] = try await client.stats().usedBytes
      } catch {
        nodeBytes[member.memberID] = member.usedBytes
      }
      await client.close()
    }
    let resident = Dictionary(
      figures.heads.map { ("\($0.layer)/\($0.kvHead)", $0.residentBytes) }, uniquingKeysWith: +)
    let entries: [Heterokv_V1_HeadBudgetEntry] = budgets.sequences.first?.heads ?? []
    let table = entries.filter { $0.layer < 2 }.map { (h: Heterokv_V1_HeadBudgetEntry) in
      let role = h.role == "satellite" ? "satellite(\(h.pivot))" : h.role
      let bytes = resident["\(h.layer)/\(h.kvHead)"] ?? 0
      return DemoReport.HeadBudget(
        layer: Int(h.layer), kvHead: Int(h.kvHead), role: role, cap: Int(h.cap),
        stability: h.stability, residentBytes: bytes)
    }
    // The memory nodes' used bytes are read before the sequence is released.
    // A node that died mid-run does not fail the release (its rows went with it); what does
    // fail it is reported after the figures.
    var releaseFailure: String?
    do {
      if let engine {
        try await engine.release(ref)
      } else if let address = cluster.worker.control {
        _ = try await EngineClient.with(
          address: address, geometry: replay.geometry, security: security
        ) {
          try await $0.release(ref)
        }
      }
    } catch {
      releaseFailure = "\(error)"
    }
    let keptShare = figures.keptShare
    let workerFraction = Double(figures.workerBytes) / Double(max(1, figures.fullKVBytes))
    let stepsPerSecond = Double(decode.steps) / max(decode.engineSeconds, 1e-9)
    return DemoReport(
      mode: mode, model: replay.geometry.name, layers: replay.geometry.layers,
      kvHeads: replay.geometry.kvHeads, headDim: replay.geometry.headDim,
      tokens: replay.contextLength, decodeSteps: decode.steps, policy: figures.policy,
      budgetFraction: cluster.budgets.memoryFraction, memoryNodes: nodeBytes.count,
      workerBytes: figures.workerBytes, memoryTierBytes: figures.memoryTierBytes,
      memoryNodeBytes: nodeBytes, fullKvBytes: figures.fullKVBytes,
      workerFraction: workerFraction,
      tokenRows: figures.tokens * replay.geometry.layers * replay.geometry.kvHeads,
      storedRows: figures.storedRows, unshippedRows: figures.unshippedRows,
      meanRelativeError: decode.meanRelativeError, maxRelativeError: decode.maxRelativeError,
      massRecall: decode.meanMassRecall, prefillSeconds: prefillSeconds,
      decodeStepsPerSecond: stepsPerSecond,
      bytesMovedPerStep: decode.bytesMoved / max(1, decode.steps), keptShare: keptShare,
      failovers: figures.failovers, refreshes: figures.refreshes, budgets: table,
      comparison: [
        .init(
          name: "\(figures.policy) (this run)", workerFraction: workerFraction,
          meanRelativeError: decode.meanRelativeError, massRecall: decode.meanMassRecall,
          keptShare: keptShare, bytesMovedPerStep: decode.bytesMoved / max(1, decode.steps),
          decodeStepsPerSecond: stepsPerSecond)
      ], releaseFailure: releaseFailure)
  }
}

/// The sequence figures the demo reports, from the worker's stats.
struct SequenceFigures {
  var policy: String
  var tokens, workerBytes, memoryTierBytes, fullKVBytes, storedRows, unshippedRows, refreshes: Int
  var failovers: Int
  /// Mean share of the context a query head's decode step attended.
  var keptShare: Double
  var heads: [(layer: Int, kvHead: Int, residentBytes: Int)]

  init(_ s: Heterokv_V1_SequenceStats) {
    policy = s.policy
    tokens = Int(s.tokens)
    workerBytes = Int(s.workerBytes)
    memoryTierBytes = Int(s.memoryTierBytes)
    fullKVBytes = Int(s.fullKvBytes)
    storedRows = Int(s.storedRows)
    unshippedRows = Int(s.unshippedRows)
    refreshes = Int(s.refreshes)
    keptShare = s.keptShare
    failovers = Int(s.failovers)
    heads = s.heads.map { (Int($0.layer), Int($0.kvHead), Int($0.residentBytes)) }
  }

  /// From the in-process worker's own figures.
  init(_ s: SequenceStats) {
    policy = s.policy.rawValue
    tokens = s.tokens
    workerBytes = s.workerBytes
    memoryTierBytes = s.memoryTierBytes
    fullKVBytes = s.fullKVBytes
    storedRows = s.storedRows
    unshippedRows = s.unshippedRows
    refreshes = s.refreshes
    keptShare = s.keptShare
    failovers = s.failovers
    heads = s.heads.map { ($0.layer, $0.kvHead, $0.residentBytes) }
  }
}

/// What `hkv demo` reports: where the bytes live, fidelity against full attention, speed,
/// the budget table and the comparison rows. Its JSON form is `hkv demo --json`.
public struct DemoReport: Codable, Sendable {
  /// One head's role, cap and worker bytes, from the coordinator's budget table.
  public struct HeadBudget: Codable, Sendable {
    public var layer, kvHead: Int
    public var role: String
    public var cap: Int
    public var stability: Double
    public var residentBytes: Int
  }
  /// One way of attending the workload, for the comparison table.
  public struct Comparison: Codable, Sendable {
    public var name: String
    public var workerFraction, meanRelativeError, massRecall, keptShare: Double
    public var bytesMovedPerStep: Int
    /// Decode steps per second where measured (the baselines run in this process, on the
    /// harness: not a cluster's speed).
    public var decodeStepsPerSecond: Double?
  }
  /// `in-process`, `processes` or `config`, and the model's name.
  public var mode, model: String
  public var layers, kvHeads, headDim, tokens, decodeSteps: Int
  public var policy: String
  public var budgetFraction: Double
  public var memoryNodes: Int
  /// Bytes on the worker and on the memory tier (all copies), and each node's used bytes.
  public var workerBytes, memoryTierBytes: Int
  public var memoryNodeBytes: [String: UInt64]
  public var fullKvBytes: Int
  public var workerFraction: Double
  /// tokens x layers x KV heads; every row is stored on a memory node or still on the worker.
  public var tokenRows, storedRows, unshippedRows: Int
  /// Relative L2 error of the outputs against full attention, and attention-mass recall.
  public var meanRelativeError, maxRelativeError, massRecall: Double
  public var prefillSeconds, decodeStepsPerSecond: Double
  public var bytesMovedPerStep: Int
  /// Mean share of the context a query head's decode step attended.
  public var keptShare: Double
  public var failovers: Int
  public var refreshes: Int
  public var budgets: [HeadBudget]
  /// This run, then StreamingLLM at the same worker memory and full attention.
  public var comparison: [Comparison]
  /// Why releasing the sequence failed, if it did (the report is printed first).
  public var releaseFailure: String?
}
