import Synchronization

/// Whether a daemon is alive and serving, as its probes report it: `/healthz` and `/readyz`
/// on the metrics port and the gRPC health service on its gRPC server. Liveness is the
/// process answering at all; readiness is every registered condition holding (the memory
/// node's data plane listening, the worker registered with the coordinator, the
/// coordinator's store open). Conditions start unmet and the daemon's parts flip them.
public final class DaemonHealth: Sendable {
  /// One condition of readiness and why it holds or not.
  public struct Condition: Sendable, Hashable {
    /// A short name (`data_plane`, `coordinator`, `store`).
    public var name: String
    /// Whether it holds.
    public var met: Bool
    /// A line for operators: what is listening, or what is missing.
    public var detail: String
  }

  private let conditions: Mutex<[String: Condition]>
  private let version = Atomic<UInt64>(0)
  private let stopping = Atomic<Bool>(false)

  /// Health whose readiness needs each of `conditions` (all unmet at first).
  public init(conditions: [String]) {
    self.conditions = Mutex(
      Dictionary(
        uniqueKeysWithValues: conditions.map {
          ($0, Condition(name: $0, met: false, detail: "not yet"))
        }))
  }

  /// Records whether `condition` holds; a name not given at creation is added.
  public func set(_ condition: String, met: Bool, detail: String) {
    let changed = conditions.withLock { all in
      let before = all[condition]?.met
      all[condition] = Condition(name: condition, met: met, detail: detail)
      return before != met
    }
    if changed { version.add(1, ordering: .releasing) }
  }

  /// Marks the daemon as stopping: it is not ready from now on, and health watchers end.
  public func beginShutdown() {
    if !stopping.exchange(true, ordering: .acquiringAndReleasing) {
      version.add(1, ordering: .releasing)
    }
  }

  /// True once a graceful shutdown began.
  public var isShuttingDown: Bool { stopping.load(ordering: .acquiring) }

  /// Every condition, sorted by name (with `shutdown` unmet once the daemon is stopping).
  public var report: [Condition] {
    var all = conditions.withLock { Array($0.values) }
    if isShuttingDown {
      all.append(Condition(name: "shutdown", met: false, detail: "stopping"))
    }
    return all.sorted { $0.name < $1.name }
  }

  /// True when every condition holds and the daemon is not stopping.
  public var isReady: Bool { report.allSatisfy(\.met) }

  /// Increases whenever readiness of some condition flips; watchers compare it to see a change.
  public var generation: UInt64 { version.load(ordering: .acquiring) }

  /// Readiness and the `/readyz` body (`ready` or `not ready`, then one line per
  /// condition), from one reading of the conditions.
  public var readiness: (ready: Bool, text: String) {
    let all = report
    let ready = all.allSatisfy(\.met)
    let lines = all.map { "\($0.met ? "ok" : "waiting") \($0.name): \($0.detail)" }
    return (ready, ([ready ? "ready" : "not ready"] + lines).joined(separator: "\n") + "\n")
  }
}
