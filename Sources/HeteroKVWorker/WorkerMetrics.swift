import HeteroKVEngineClient
import CoreMetrics
import Synchronization

/// The worker's metrics: latency of the engine calls, what each decode step kept and moved,
/// and the state of its sequences. Created through a factory (Prometheus in the daemon, a
/// test factory in tests, none in a library embedding), never the global bootstrap, so that
/// workers in one process do not share them. docs/metrics.md lists them.
public final class WorkerMetrics: Sendable {
  /// Value-histogram buckets for the metrics that are not durations, for a Prometheus
  /// factory's `valueHistogramBuckets`: token counts and byte counts span many decades.
  public static let valueHistogramBuckets: [String: [Double]] = [
    "hkv_worker_step_kept_tokens": (0..<24).map { Double(1 << $0) },
    "hkv_worker_step_bytes": (8..<34).map { Double(1 << $0) },
  ]

  private let appendDuration: CoreMetrics.Timer
  private let attendDuration: CoreMetrics.Timer
  private let keptTokens: Recorder
  private let keptTokensTotal: Counter
  private let contextTokensTotal: Counter
  private let workerStepBytes: Recorder
  private let memoryStepBytes: Recorder
  private let refreshesTotal: Counter
  private let failoversTotal: Counter
  private let releaseUnreachable: Counter
  private let repairedShards: Counter
  private let repairFailures: Counter
  private let repairDuration: CoreMetrics.Timer
  private let failedCalls: [String: Counter]
  private let openSequences: Gauge
  private let residentBytes: Gauge
  private let underReplicated: Gauge
  private let totals = Mutex<(open: Int, resident: Int, underReplicated: Int)>((0, 0, 0))

  /// Metrics of worker `workerID`, through `factory`.
  public init(workerID: String, factory: any MetricsFactory) {
    let worker = ("worker", workerID)
    appendDuration = CoreMetrics.Timer(
      label: "hkv_worker_append_duration_seconds", dimensions: [worker], factory: factory)
    attendDuration = CoreMetrics.Timer(
      label: "hkv_worker_attend_duration_seconds", dimensions: [worker], factory: factory)
    keptTokens = Recorder(
      label: "hkv_worker_step_kept_tokens", dimensions: [worker], aggregate: true,
      factory: factory)
    keptTokensTotal = Counter(
      label: "hkv_worker_kept_tokens_total", dimensions: [worker], factory: factory)
    contextTokensTotal = Counter(
      label: "hkv_worker_context_tokens_total", dimensions: [worker], factory: factory)
    workerStepBytes = Recorder(
      label: "hkv_worker_step_bytes", dimensions: [worker, ("tier", "worker")], aggregate: true,
      factory: factory)
    memoryStepBytes = Recorder(
      label: "hkv_worker_step_bytes", dimensions: [worker, ("tier", "memory_nodes")],
      aggregate: true, factory: factory)
    refreshesTotal = Counter(
      label: "hkv_worker_satellite_refreshes_total", dimensions: [worker], factory: factory)
    failoversTotal = Counter(
      label: "hkv_worker_failovers_total", dimensions: [worker], factory: factory)
    releaseUnreachable = Counter(
      label: "hkv_worker_release_unreachable_nodes_total", dimensions: [worker], factory: factory
    )
    repairedShards = Counter(
      label: "hkv_worker_repaired_shards_total", dimensions: [worker], factory: factory)
    repairFailures = Counter(
      label: "hkv_worker_repair_failures_total", dimensions: [worker], factory: factory)
    repairDuration = CoreMetrics.Timer(
      label: "hkv_worker_repair_pass_duration_seconds", dimensions: [worker], factory: factory)
    var failed: [String: Counter] = [:]
    for call in ["append", "attend"] {
      failed[call] = Counter(
        label: "hkv_worker_failed_calls_total", dimensions: [worker, ("call", call)],
        factory: factory)
    }
    failedCalls = failed
    openSequences = Gauge(
      label: "hkv_worker_open_sequences", dimensions: [worker], factory: factory)
    residentBytes = Gauge(
      label: "hkv_worker_resident_bytes", dimensions: [worker], factory: factory)
    underReplicated = Gauge(
      label: "hkv_worker_under_replicated_shards", dimensions: [worker], factory: factory)
    openSequences.record(0)
    residentBytes.record(0)
    underReplicated.record(0)
  }

  /// Metrics that go nowhere, for a worker embedded without a metrics system.
  public static func none(workerID: String) -> WorkerMetrics {
    WorkerMetrics(workerID: workerID, factory: NOOPMetricsHandler.instance)
  }

  func appended(nanoseconds: Int64) { appendDuration.recordNanoseconds(nanoseconds) }

  func failed(_ call: String) { failedCalls[call]?.increment() }

  /// One layer's decode step: its latency, the tokens its query heads kept out of the
  /// context they saw, and the bytes it read on the worker and moved to and from the nodes.
  func attended(
    nanoseconds: Int64, keptTokens kept: Int, contextTokens: Int, workerBytes: Int,
    memoryNodeBytes: Int
  ) {
    attendDuration.recordNanoseconds(nanoseconds)
    keptTokens.record(kept)
    keptTokensTotal.increment(by: kept)
    contextTokensTotal.increment(by: contextTokens)
    workerStepBytes.record(workerBytes)
    memoryStepBytes.record(memoryNodeBytes)
  }

  func refreshed() { refreshesTotal.increment() }

  func failedOver(_ count: Int) { if count > 0 { failoversTotal.increment(by: count) } }

  /// A repair pass: shard copies made and failed, and how long it took.
  func repaired(shards: Int, failed: Int, nanoseconds: Int64) {
    if shards > 0 { repairedShards.increment(by: shards) }
    if failed > 0 { repairFailures.increment(by: failed) }
    repairDuration.recordNanoseconds(nanoseconds)
  }

  func releaseMissed(nodes: Int) { if nodes > 0 { releaseUnreachable.increment(by: nodes) } }

  /// Applies changes to the totals behind the three gauges.
  func adjust(open: Int = 0, resident: Int = 0, underReplicated delta: Int = 0) {
    // Recorded under the lock, so concurrent changes reach the gauges in the order applied.
    totals.withLock { t in
      t.open += open
      t.resident += resident
      t.underReplicated += delta
      if open != 0 { openSequences.record(t.open) }
      if resident != 0 { residentBytes.record(t.resident) }
      if delta != 0 { underReplicated.record(t.underReplicated) }
    }
  }
}
