import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

/// A sequence on the worker: its layers' key indices, caches and unshipped rows, its shard
/// writer, placement and budgets. An actor, so each sequence's calls run one at a time while
/// different sequences proceed side by side; a FIFO gate keeps calls in arrival order across
/// the suspensions of network work.
actor SequenceSession {
  let ref: SequenceRef
  let options: WorkerOptions
  let control: any ClusterControl
  let backend: any AttentionBackend
  let tier: MemoryTierClient
  let writer: ShardWriter
  let placement: SequencePlacement
  /// Tokens the sequence may hold per layer (what the coordinator reserved for).
  let maxTokens: Int
  /// Profiles from an offline calibration, when the engine gave them.
  let calibrated: [HeadProfile]?
  let metrics: WorkerMetrics
  var layers: [LayerState]
  /// Worker-resident bytes per layer as last reported to the metrics.
  var layerResident: [Int]
  var prefillTokens = 0
  var budgets: SequenceBudgets?
  var decodeSteps = 0
  /// Bytes near-data attention moved (decode steps only; puts are the writer's).
  var bytesMoved = 0
  /// Bytes the writer had sent when the prefill ended.
  var prefillBytesSent = 0
  var released = false
  var keptTokens = 0
  var contextTokens = 0
  var refreshes = 0
  var failovers = 0
  /// Satellite refreshes still running, by the number they were started under; each removes
  /// itself when done, so a long decode keeps none that finished.
  var refreshTasks: [Int: Task<Void, Never>] = [:]
  var startedRefreshes = 0
  var busy = false
  var gate: [CheckedContinuation<Void, Never>] = []
  /// Set when a failure left the sequence's state inconsistent; every later call throws it.
  var poisoned: HeteroKVError?

  var geometry: ModelGeometry { options.geometry }
  var sealed: Bool { budgets != nil }

  init(
    ref: SequenceRef, options: WorkerOptions, control: any ClusterControl,
    backend: any AttentionBackend, tier: MemoryTierClient, placement: SequencePlacement,
    maxTokens: Int, calibrated: [HeadProfile]? = nil, metrics: WorkerMetrics
  ) {
    self.ref = ref
    self.maxTokens = maxTokens
    self.metrics = metrics
    self.calibrated = calibrated
    self.options = options
    self.control = control
    self.backend = backend
    self.tier = tier
    self.placement = placement
    self.writer = ShardWriter(
      ref: ref, tier: tier, placement: placement.rendezvous,
      placementVersion: placement.version, acknowledgement: options.acknowledgement,
      chunkTokens: options.chunkTokens,
      limitBytes: options.shipQueueBytes, metrics: metrics)
    let g = options.geometry
    layers = (0..<g.layers).map { _ in
      LayerState(heads: (0..<g.kvHeads).map { _ in HeadState(headDim: g.headDim) })
    }
    layerResident = Array(repeating: 0, count: g.layers)
  }

  /// Reports the change of `layer`'s worker-resident bytes to the metrics.
  func noteResident(layer: Int) {
    guard !released else { return }
    let now = layers[layer].heads.reduce(0) { $0 + $1.residentBytes }
    if now != layerResident[layer] {
      metrics.adjust(resident: now - layerResident[layer])
      layerResident[layer] = now
    }
  }

  func enter() async {
    if busy {
      await withCheckedContinuation { gate.append($0) }
    } else {
      busy = true
    }
  }

  func checkUsable() throws(HeteroKVError) {
    if let poisoned { throw poisoned }
  }

  func leave() {
    if gate.isEmpty { busy = false } else { gate.removeFirst().resume() }
  }

  func checkLayer(_ layer: Int) throws(HeteroKVError) {
    guard (0..<geometry.layers).contains(layer) else {
      throw HeteroKVError(
        .invalidArgument, "layer \(layer) is outside 0..<\(geometry.layers) of \(geometry.name)")
    }
  }
}
