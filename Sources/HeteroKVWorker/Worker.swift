@_exported import HeteroKVEngineClient
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire
import Logging
import Synchronization

/// A sequence as created: its geometry and where its shards go.
public struct SequenceInfo: Sendable, Hashable {
  public var ref: SequenceRef
  public var geometry: ModelGeometry
  public var placement: SequencePlacement
}

/// The worker as a library: the engine API an inference engine calls per sequence and layer.
/// It keeps key codes and compressed caches, ships values (and the keys the memory tier
/// keeps) to the memory nodes the coordinator placed the sequence on, and answers attention
/// from resident caches and near-data attention on those nodes. Sequences are independent:
/// one failing (a lost shard) does not stop the others.
public final class Worker: Sendable {
  /// What the worker runs with.
  public let options: WorkerOptions
  let control: any ClusterControl
  let backend: any AttentionBackend
  /// What the worker reports to its metrics system.
  public let metrics: WorkerMetrics
  private let sessions = Mutex<[SequenceRef: SequenceSession]>([:])
  /// One client per memory node, shared by every sequence placed on it.
  private let nodeClients = Mutex<[MemoryNodeEndpoint: MemoryNodeClient]>([:])
  /// The replica checks and the retried closes running in the background.
  private let background = Mutex<
    (checks: Task<Void, Never>?, closes: [SequenceRef: Task<Void, Never>], stopped: Bool)
  >((nil, [:], false))

  /// A worker that asks `control` for placements and budgets and computes on `backend`,
  /// reporting to `metrics` (none by default).
  public init(
    options: WorkerOptions, control: any ClusterControl,
    backend: any AttentionBackend = CPUAttentionBackend(), metrics: WorkerMetrics? = nil
  ) throws(HeteroKVError) {
    try options.validate()
    self.options = options
    self.control = control
    self.backend = backend
    self.metrics = metrics ?? .none(workerID: options.id)
  }

  /// Open sequences.
  public var sequences: [SequenceRef] { sessions.withLock { Array($0.keys).sorted() } }

  /// Opens a sequence of at most `maxTokens` tokens: the coordinator places it and reserves
  /// memory-tier room for it. `profiles` (one per KV head of every layer, from an offline
  /// calibration run) fix the heads' roles; without them the heads are profiled from the
  /// prefill's observation queries.
  public func createSequence(
    _ ref: SequenceRef, maxTokens: Int, profiles: [HeadProfile]? = nil
  ) async throws(HeteroKVError) -> SequenceInfo {
    guard maxTokens > 0 else {
      throw HeteroKVError(.invalidArgument, "sequence \(ref): max tokens must be positive")
    }
    if let profiles { try Self.check(profiles, geometry: options.geometry) }
    if sessions.withLock({ $0[ref] }) != nil {
      throw HeteroKVError(.alreadyExists, "sequence \(ref) is already open on this worker")
    }
    try finishPendingClose(ref)
    let placement = try await control.openSequence(ref, worker: options.id, maxTokens: maxTokens)
    let tier = MemoryTierClient(
      clients: placement.nodes.map { node in
        nodeClients.withLock { clients in
          if let client = clients[node.endpoint] { return client }
          let client = MemoryNodeClient(
            endpoint: node.endpoint, defaultTimeout: options.requestTimeout,
            credential: options.dataPlaneCredential)
          clients[node.endpoint] = client
          return client
        }
      })
    let session = SequenceSession(
      ref: ref, options: options, control: control, backend: backend, tier: tier,
      placement: placement, maxTokens: maxTokens, calibrated: profiles, metrics: metrics)
    let raced = sessions.withLock { open -> Bool in
      if open[ref] != nil { return true }
      open[ref] = session
      return false
    }
    if raced {
      throw HeteroKVError(.alreadyExists, "sequence \(ref) is already open on this worker")
    }
    metrics.adjust(open: 1)
    startReplicaChecks()
    return SequenceInfo(ref: ref, geometry: options.geometry, placement: placement)
  }

  /// Starts (once) the loop that checks every open sequence's copies each
  /// ``WorkerOptions/replicaCheckInterval``: a sequence with a node marked down or a shard
  /// short of replicas fetches its placement and repairs; every tenth check all do.
  private func startReplicaChecks() {
    let interval = options.replicaCheckInterval
    background.withLock { state in
      guard state.checks == nil, !state.stopped else { return }
      state.checks = Task.detached { [weak self] in
        var tick = 0
        while !Task.isCancelled {
          try? await Task.sleep(for: interval)
          guard let self, !Task.isCancelled else { return }
          tick += 1
          let open = self.sessions.withLock { Array($0.values) }
          let force = tick % 10 == 0
          // Side by side: one sequence's slow repair does not hold up the others' checks.
          await withDiscardingTaskGroup { group in
            for session in open { group.addTask { await session.maintainReplicas(force: force) } }
          }
        }
      }
    }
  }

  /// Closes `ref` at the coordinator in the background until it takes it (backing off from
  /// half a second to five), after a release that could not reach it.
  private func retryClose(_ ref: SequenceRef, undroppedNodes: [String]) {
    let control = self.control
    background.withLock { state in
      guard !state.stopped, state.closes[ref] == nil else { return }
      state.closes[ref] = Task.detached { [weak self] in
        var delay = Duration.milliseconds(500)
        while !Task.isCancelled {
          try? await Task.sleep(for: delay)
          do throws(HeteroKVError) {
            try await control.closeSequence(ref, undroppedNodes: undroppedNodes)
            break
          } catch  where error.code == .notFound || error.code == .unknownSequence {
            break
          } catch {
            delay = min(delay * 2, .seconds(5))
          }
        }
        _ = self?.background.withLock { $0.closes.removeValue(forKey: ref) }
      }
    }
  }

  /// Memory nodes this worker has marked down (a request failed to reach them and no probe
  /// has since), sorted by id: they are skipped by reads and writes while another replica is up.
  public var nodesMarkedDown: [String] {
    nodeClients.withLock { clients in
      clients.values.filter { !$0.isHealthy }.map(\.endpoint.id).sorted()
    }
  }

  /// Refuses to open `ref` again while a release left its earlier close pending (the
  /// coordinator's open is idempotent for this worker, so it would hand back the old record,
  /// and the retried close would then close the new sequence).
  private func finishPendingClose(_ ref: SequenceRef) throws(HeteroKVError) {
    guard background.withLock({ $0.closes[ref] != nil }) else { return }
    throw HeteroKVError(
      .unavailable,
      "sequence \(ref) was released but the coordinator has not closed it yet (it is being "
        + "retried); open it again once the coordinator answers")
  }

  /// Sequences released here whose close the coordinator has not taken yet.
  public var pendingCloses: [SequenceRef] {
    background.withLock { Array($0.closes.keys).sorted() }
  }

  /// Calibrated profiles must name every KV head of every layer once, with values in range.
  static func check(_ profiles: [HeadProfile], geometry g: ModelGeometry) throws(HeteroKVError) {
    var seen = Set<[Int]>()
    for p in profiles {
      guard (0..<g.layers).contains(p.layer), (0..<g.kvHeads).contains(p.kvHead),
        seen.insert([p.layer, p.kvHead]).inserted
      else {
        throw HeteroKVError(
          .invalidArgument,
          "profile of layer \(p.layer) head \(p.kvHead) is out of range or repeated")
      }
      guard (0...1).contains(p.stability), p.similarity.count == g.kvHeads,
        p.similarity.allSatisfy({ (0...1).contains($0) })
      else {
        throw HeteroKVError(
          .invalidArgument,
          "profile of layer \(p.layer) head \(p.kvHead): stability and \(g.kvHeads) "
            + "similarities must lie in [0, 1]")
      }
      if case .satellite(let pivot) = p.role, !(0..<g.kvHeads).contains(pivot) {
        throw HeteroKVError(
          .invalidArgument, "profile of layer \(p.layer) head \(p.kvHead): pivot \(pivot)")
      }
    }
    guard seen.count == g.layers * g.kvHeads else {
      throw HeteroKVError(
        .invalidArgument,
        "\(seen.count) profiles for \(g.layers) layers x \(g.kvHeads) KV heads")
    }
  }

  private func session(_ ref: SequenceRef) throws(HeteroKVError) -> SequenceSession {
    guard let session = sessions.withLock({ $0[ref] }) else {
      throw HeteroKVError(.unknownSequence, "no open sequence \(ref) on this worker")
    }
    return session
  }

  /// Appends K/V `[tokens][kvHeads][headDim]` to `layer`: a prefill chunk before the first
  /// `attend`, decode tokens after it. `observation` (prefill only) holds the prefill's last
  /// queries `[rows][queryHeads][headDim]`, which HeteroCache profiles heads with. Returns the
  /// layer's length.
  @discardableResult
  public func append(
    _ ref: SequenceRef, layer: Int, tokens: Int, keys: [Float16], values: [Float16],
    observation: [Float]? = nil
  ) async throws(HeteroKVError) -> Int {
    let started = ContinuousClock.now
    do {
      let length = try await session(ref).append(
        layer: layer, tokens: tokens, keys: keys, values: values, observation: observation)
      metrics.appended(nanoseconds: (ContinuousClock.now - started).nanoseconds)
      return length
    } catch {
      metrics.failed("append")
      throw error
    }
  }

  /// Attention of `queries` `[queryHeads][headDim]` over what `layer` holds. The first call
  /// ends the prefill.
  public func attend(
    _ ref: SequenceRef, layer: Int, queries: [Float], withSelection: Bool = false
  ) async throws(HeteroKVError) -> AttendResult {
    let started = ContinuousClock.now
    do {
      let result = try await session(ref).attend(
        layer: layer, queries: queries, withSelection: withSelection)
      metrics.attended(
        nanoseconds: (ContinuousClock.now - started).nanoseconds, keptTokens: result.keptTokens,
        contextTokens: result.contextTokens, workerBytes: result.workerBytesRead,
        memoryNodeBytes: result.bytesMoved)
      return result
    } catch {
      metrics.failed("attend")
      throw error
    }
  }

  /// Drops the sequence here, on the memory nodes and at the coordinator; returns the bytes
  /// the memory tier released. Nodes that cannot be reached do not fail it (their rows are
  /// gone with them); they are logged by `WorkerDaemon`'s caller through ``releaseDetailed(_:)``
  /// and counted in the metrics.
  @discardableResult
  public func release(_ ref: SequenceRef) async throws(HeteroKVError) -> Int {
    try await releaseDetailed(ref).releasedBytes
  }

  /// ``release(_:)``, also naming the nodes that could not be told to drop their rows.
  public func releaseDetailed(_ ref: SequenceRef) async throws(HeteroKVError) -> ReleaseOutcome {
    let session = try session(ref)
    // A release the coordinator did not take stays open here, so that it can be retried
    // (dropping rows again is harmless); one that succeeded removes the session.
    let outcome = try await session.release()
    if sessions.withLock({ $0.removeValue(forKey: ref) }) != nil { metrics.adjust(open: -1) }
    if let undropped = outcome.coordinatorPending {
      Logger(label: "hkv.worker").warning(
        "released a sequence while the coordinator is unreachable; retrying its close",
        metadata: ["sequence": "\(ref)"])
      retryClose(ref, undroppedNodes: undropped)
    }
    if !outcome.unreachableNodes.isEmpty {
      Logger(label: "hkv.worker").warning(
        """
        released a sequence without reaching every node; their rows are gone with them or \
        are reclaimed by the coordinator
        """,
        metadata: [
          "sequence": "\(ref)", "nodes": "\(outcome.unreachableNodes.joined(separator: ","))",
        ])
    }
    return outcome
  }

  /// The sequence's footprint and traffic.
  public func stats(_ ref: SequenceRef) async throws(HeteroKVError) -> SequenceStats {
    try await session(ref).stats()
  }

  /// Waits until every row of the sequence is on the memory tier.
  public func flush(_ ref: SequenceRef) async throws(HeteroKVError) {
    try await session(ref).flush()
  }

  /// Waits for the sequence's background work (rows being shipped, satellites being
  /// refreshed) to end without changing what it holds, so a benchmark can charge that work to
  /// the sequence that started it.
  public func settle(_ ref: SequenceRef) async throws(HeteroKVError) {
    try await session(ref).settle()
  }

  /// Stops the background checks and closes every memory-node connection.
  public func shutdown() async {
    let tasks = background.withLock { state -> [Task<Void, Never>] in
      state.stopped = true
      defer {
        state.checks = nil
        state.closes = [:]
      }
      return [state.checks].compactMap { $0 } + Array(state.closes.values)
    }
    for task in tasks { task.cancel() }
    let clients = nodeClients.withLock { Array($0.values) }
    for client in clients { await client.close() }
  }
}
