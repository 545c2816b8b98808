import CoreMetrics
import HeteroKVWire
import Synchronization

/// The node's counters: per-operation successes, failures and latency for Prometheus, and the
/// same counts kept locally for the control service's `GetStats`.
public final class MemoryNodeMetrics: Sendable {
  private let ok: [Opcode: Counter]
  private let failed: [Opcode: Counter]
  private let latency: [Opcode: CoreMetrics.Timer]
  private let rejectedFrames: Counter
  private let bytesIn: Counter
  private let bytesOut: Counter
  let capacityBytes: Gauge
  let usedBytes: Gauge
  let storedBytes: Gauge
  let shards: Gauge
  private let counts = Mutex<[Opcode: (ok: UInt64, failed: UInt64)]>([:])

  /// Metrics created through `factory` (a Prometheus factory in the daemon, a test factory in
  /// tests; never the global bootstrap, so that nodes in one process do not share them).
  public init(nodeID: String, factory: any MetricsFactory) {
    let node = ("node", nodeID)
    var ok: [Opcode: Counter] = [:]
    var failed: [Opcode: Counter] = [:]
    var latency: [Opcode: CoreMetrics.Timer] = [:]
    for op in Opcode.allCases {
      ok[op] = Counter(
        label: "hkv_memnode_requests_total", dimensions: [node, ("op", op.name), ("result", "ok")],
        factory: factory)
      failed[op] = Counter(
        label: "hkv_memnode_requests_total",
        dimensions: [node, ("op", op.name), ("result", "error")], factory: factory)
      latency[op] = CoreMetrics.Timer(
        label: "hkv_memnode_request_duration_seconds", dimensions: [node, ("op", op.name)],
        factory: factory)
    }
    self.ok = ok
    self.failed = failed
    self.latency = latency
    rejectedFrames = Counter(
      label: "hkv_memnode_rejected_frames_total", dimensions: [node], factory: factory)
    bytesIn = Counter(
      label: "hkv_memnode_payload_bytes_in_total", dimensions: [node], factory: factory)
    bytesOut = Counter(
      label: "hkv_memnode_payload_bytes_out_total", dimensions: [node], factory: factory)
    capacityBytes = Gauge(label: "hkv_memnode_capacity_bytes", dimensions: [node], factory: factory)
    usedBytes = Gauge(label: "hkv_memnode_used_bytes", dimensions: [node], factory: factory)
    storedBytes = Gauge(label: "hkv_memnode_stored_bytes", dimensions: [node], factory: factory)
    shards = Gauge(label: "hkv_memnode_shards", dimensions: [node], factory: factory)
  }

  func record(_ op: Opcode, success: Bool, nanoseconds: Int64, bytesIn: Int, bytesOut: Int) {
    (success ? ok : failed)[op]!.increment()
    latency[op]!.recordNanoseconds(nanoseconds)
    self.bytesIn.increment(by: bytesIn)
    self.bytesOut.increment(by: bytesOut)
    counts.withLock { c in
      var entry = c[op] ?? (0, 0)
      if success { entry.ok += 1 } else { entry.failed += 1 }
      c[op] = entry
    }
  }

  func rejected() { rejectedFrames.increment() }

  /// Requests served so far, per operation.
  public func requestCounts() -> [Opcode: (ok: UInt64, failed: UInt64)] { counts.withLock { $0 } }
}
