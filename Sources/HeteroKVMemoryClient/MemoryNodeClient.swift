import HeteroKVCore
import HeteroKVTransport
import HeteroKVWire
import NIOCore
import Synchronization

/// The client of one memory node: a small pool of pipelined connections (made on first use,
/// replaced when they fail), typed requests, deadlines, and errors that name the node.
/// Reads (gather, partial attention, stats, ping) are retried once on a fresh connection when
/// the connection drops; writes are not, so a put is never applied twice.
///
/// It also keeps the node's health: a request that fails because the node cannot be reached
/// (refused, closed, or past its deadline) marks it down, and a probe pings it every
/// ``probeInterval`` until it answers again. Callers with a choice (replicas, writers) skip a
/// node that is down, so a dead node costs one timeout, not one per step.
public final class MemoryNodeClient: Sendable {
  /// The node.
  public let endpoint: MemoryNodeEndpoint
  /// Deadline applied to requests that do not give their own.
  public let defaultTimeout: Duration
  /// How often a node marked down is pinged, and the deadline of each ping.
  public let probeInterval: Duration
  private let pool: ConnectionPool
  private let limits: DataPlaneLimits
  private let health = Mutex(NodeHealthState())

  private struct NodeHealthState {
    var down = false
    var probe: Task<Void, Never>?
    var closed = false
    var markedDown = 0
  }

  /// Codes that say the node could not be reached, as opposed to a refusal it answered with.
  public static let unreachableCodes: Set<HeteroKVError.Code> = [
    .unavailable, .connectionClosed, .deadlineExceeded,
  ]

  /// A client with up to `connections` connections to `endpoint`, each authenticated with
  /// `credential` before its first request (required by a node whose cluster sets a token).
  public init(
    endpoint: MemoryNodeEndpoint, connections: Int = 2, defaultTimeout: Duration = .seconds(10),
    limits: DataPlaneLimits = .standard, credential: DataPlaneCredential? = nil,
    probeInterval: Duration = .milliseconds(500)
  ) {
    precondition(connections > 0)
    self.endpoint = endpoint
    self.defaultTimeout = defaultTimeout
    self.probeInterval = probeInterval
    self.limits = limits
    self.pool = ConnectionPool(
      endpoint: endpoint, size: connections, limits: limits, credential: credential,
      timeout: defaultTimeout)
  }

  /// Appends rows to a shard (all or none).
  public func put(_ request: PutRequest, timeout: Duration? = nil) async throws(HeteroKVError)
    -> PutResponse
  {
    try await send(request, timeout: timeout, retry: false)
  }

  /// Drops a shard, sequence or namespace.
  public func drop(_ request: DropRequest, timeout: Duration? = nil) async throws(HeteroKVError)
    -> DropResponse
  {
    try await send(request, timeout: timeout, retry: false)
  }

  /// Rows by token position.
  public func gather(_ request: GatherRequest, timeout: Duration? = nil)
    async throws(HeteroKVError) -> GatherResponse
  {
    try await send(request, timeout: timeout, retry: true)
  }

  /// Near-data attention over chosen rows, as a partial ready for an exact merge.
  public func partialAttention(_ request: PartialAttentionRequest, timeout: Duration? = nil)
    async throws(HeteroKVError) -> AttentionPartial
  {
    try partial(answering: request, try await send(request, timeout: timeout, retry: true))
  }

  /// Sends `request` now on a connection already made and returns its pending answer; nil
  /// when no connection is ready (``partialAttention(_:timeout:)`` then makes one). The
  /// pending answer is not retried: a caller whose call is lost asks again.
  public func startPartialAttention(_ request: PartialAttentionRequest, timeout: Duration? = nil)
    -> PendingPartialAttention?
  {
    guard let connection = pool.readyConnection() else { return nil }
    let call = connection.start(
      opcode: PartialAttentionRequest.opcode, payload: request.encoded(),
      timeout: timeout ?? defaultTimeout)
    return PendingPartialAttention(client: self, request: request, call: call)
  }

  /// The partial in a node's `response` to `request`, checked against what was asked.
  fileprivate func partial(
    answering request: PartialAttentionRequest, _ response: PartialAttentionResponse
  ) throws(HeteroKVError) -> AttentionPartial {
    guard response.maxScores.count == request.heads.count, response.headDim == request.headDim
    else {
      throw HeteroKVError(
        .malformedFrame,
        "node \(endpoint.id) answered \(response.maxScores.count) heads of \(response.headDim) for \(request.heads.count) of \(request.headDim)"
      )
    }
    return AttentionPartial(
      headDim: response.headDim, outputs: response.outputs, maxScores: response.maxScores,
      sumExps: response.sumExps)
  }

  /// A pending call's payload decoded as `request`'s response, with the node's health updated
  /// as ``send(_:timeout:retry:probing:)`` does and errors naming the node.
  fileprivate func finish(_ request: PartialAttentionRequest, _ call: PendingCall)
    async throws(HeteroKVError) -> AttentionPartial
  {
    do {
      let payload = try await call.value()
      let response = try PartialAttentionResponse(payload: payload, limits: limits)
      let partial = try partial(answering: request, response)
      noteAnswered()
      return partial
    } catch {
      // A lost connection is asked again on a fresh one by the caller (as `send` retries),
      // which marks the node down if that fails too; a missed deadline marks it now.
      if error.code == .deadlineExceeded { markDown() }
      throw HeteroKVError(error.code, "node \(endpoint.id) (\(endpoint.data)): \(error.message)")
    }
  }

  /// The node's capacity and use.
  public func stats(timeout: Duration? = nil) async throws(HeteroKVError) -> StatsResponse {
    try await send(StatsRequest(), timeout: timeout, retry: true)
  }

  /// An empty round trip.
  public func ping(timeout: Duration? = nil) async throws(HeteroKVError) {
    _ = try await send(PingRequest(), timeout: timeout, retry: true)
  }

  /// False while the node is marked down (it failed to answer and no probe reached it since).
  public var isHealthy: Bool { health.withLock { !$0.down } }

  /// How many times the node was marked down.
  public var timesMarkedDown: Int { health.withLock { $0.markedDown } }

  /// Marks the node down and starts probing it (once; a probe already running goes on).
  public func markDown() {
    let interval = probeInterval
    health.withLock { state in
      guard !state.closed else { return }
      if !state.down { state.markedDown += 1 }
      state.down = true
      guard state.probe == nil else { return }
      // Made under the lock, so two failures at once start one probe. The probe holds the
      // client weakly: a client that is let go stops being probed.
      state.probe = Task.detached { [weak self] in
        while !Task.isCancelled {
          try? await Task.sleep(for: interval)
          guard let self, !Task.isCancelled else { return }
          do {
            _ = try await self.send(PingRequest(), timeout: interval, retry: false, probing: true)
            self.health.withLock {
              $0.down = false
              $0.probe = nil
            }
            return
          } catch {
            continue
          }
        }
      }
    }
  }

  /// The node answered: it is up, and its probe (if any) can stop.
  private func noteAnswered() {
    let probe = health.withLock { state -> Task<Void, Never>? in
      guard state.down else { return nil }
      state.down = false
      defer { state.probe = nil }
      return state.probe
    }
    probe?.cancel()
  }

  /// Closes every connection and stops the probe.
  public func close() async {
    let probe = health.withLock { state -> Task<Void, Never>? in
      state.closed = true
      defer { state.probe = nil }
      return state.probe
    }
    probe?.cancel()
    await pool.closeAll()
  }

  private func send<Request: DataPlaneRequest>(
    _ request: Request, timeout: Duration?, retry: Bool, probing: Bool = false
  ) async throws(HeteroKVError) -> Request.Response {
    let payload = request.encoded()
    var attempt = 0
    while true {
      attempt += 1
      do {
        // A connection already made is taken without a hop through the pool's actor: on a
        // decode step's path each hop waits for a free thread.
        let connection: any DataPlaneConnection
        if let ready = pool.readyConnection() {
          connection = ready
        } else {
          connection = try await pool.connection()
        }
        let response = try await connection.call(
          opcode: Request.opcode, payload: payload, timeout: timeout ?? defaultTimeout)
        let decoded = try Request.Response(payload: response, limits: limits)
        if !probing { noteAnswered() }
        return decoded
      } catch {
        let lost = error.code == .connectionClosed || error.code == .unavailable
        if lost && retry && attempt == 1 { continue }
        if !probing && Self.unreachableCodes.contains(error.code) { markDown() }
        throw HeteroKVError(error.code, "node \(endpoint.id) (\(endpoint.data)): \(error.message)")
      }
    }
  }
}

/// A partial-attention request sent by ``MemoryNodeClient/startPartialAttention(_:timeout:)``,
/// whose answer is read once the caller needs it.
public struct PendingPartialAttention: Sendable {
  /// The node asked.
  public let client: MemoryNodeClient
  /// What it was asked.
  public let request: PartialAttentionRequest
  let call: PendingCall

  /// The node's partial; waits only when it has not arrived.
  public func value() async throws(HeteroKVError) -> AttentionPartial {
    try await client.finish(request, call)
  }
}

/// Up to `size` connections to one node, made on demand, handed out round robin; a connection
/// that is no longer active is replaced on the next request that lands on its slot.
actor ConnectionPool {
  private let endpoint: MemoryNodeEndpoint
  private let limits: DataPlaneLimits
  private var slots: [Task<any DataPlaneConnection, any Error>?]
  private var next = 0
  private let useRDMA: Bool
  private let credential: DataPlaneCredential?
  private let timeout: Duration
  /// The connections made so far by slot, and the next slot to hand out, for callers that take
  /// a ready connection without awaiting the actor.
  private nonisolated let ready: Mutex<(connections: [(any DataPlaneConnection)?], next: Int)>

  init(
    endpoint: MemoryNodeEndpoint, size: Int, limits: DataPlaneLimits,
    credential: DataPlaneCredential?, timeout: Duration
  ) {
    self.endpoint = endpoint
    self.limits = limits
    self.credential = credential
    self.timeout = timeout
    self.slots = Array(repeating: nil, count: size)
    self.ready = Mutex((Array(repeating: nil, count: size), 0))
    self.useRDMA = endpoint.transport == .rdma && RDMAAvailability.probe().isAvailable
  }

  /// The next slot's connection when it is made and still active, round robin; nil sends the
  /// caller to ``connection()``, which makes or replaces it.
  nonisolated func readyConnection() -> (any DataPlaneConnection)? {
    ready.withLock { state in
      guard !state.connections.isEmpty else { return nil }
      let slot = state.next
      guard let connection = state.connections[slot], connection.isActive else { return nil }
      state.next = (slot + 1) % state.connections.count
      return connection
    }
  }

  private func noteReady(_ connection: (any DataPlaneConnection)?, slot: Int) {
    ready.withLock { $0.connections[slot] = connection }
  }

  func connection() async throws(HeteroKVError) -> any DataPlaneConnection {
    let slot = next
    next = (next + 1) % slots.count
    if let task = slots[slot] {
      if let connection = try? await task.value, connection.isActive { return connection }
      slots[slot] = nil
      noteReady(nil, slot: slot)
    }
    let endpoint = self.endpoint
    let limits = self.limits
    let rdma = useRDMA
    let credential = self.credential
    let timeout = self.timeout
    let task = Task { () throws -> any DataPlaneConnection in
      // A node in this process is reached without a socket; looked up at every connect, so a
      // node restarted at the same address is found again.
      let connection: any DataPlaneConnection =
        if let colocated = ColocatedDataPlaneServer.server(at: endpoint.data) {
          try colocated.connect(limits: limits)
        } else if rdma {
          try RDMADataPlaneConnection.connect(
            host: endpoint.data.host, port: endpoint.data.port, limits: limits)
        } else {
          try await TCPDataPlaneConnection.connect(
            host: endpoint.data.host, port: endpoint.data.port, limits: limits)
        }
      if let credential {
        do {
          try await connection.authenticate(credential, timeout: timeout)
        } catch {
          await connection.close()
          throw error
        }
      }
      return connection
    }
    slots[slot] = task
    do {
      let connection = try await task.value
      if slots[slot] == task { noteReady(connection, slot: slot) }
      return connection
    } catch {
      slots[slot] = nil
      if let error = error as? HeteroKVError { throw error }
      throw HeteroKVError(.unavailable, "\(error)", cause: error)
    }
  }

  func closeAll() async {
    for task in slots.compactMap({ $0 }) {
      if let connection = try? await task.value { await connection.close() }
    }
    slots = Array(repeating: nil, count: slots.count)
    ready.withLock { $0.connections = Array(repeating: nil, count: $0.connections.count) }
  }
}
