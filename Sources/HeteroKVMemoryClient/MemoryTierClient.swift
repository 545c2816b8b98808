import HeteroKVCore
import HeteroKVWire

/// The memory tier as a worker sees it: a client per node, and the fan-out of one decode
/// step's near-data attention requests to every node that holds kept tokens, in parallel,
/// merged exactly.
public final class MemoryTierClient: Sendable {
  /// Clients by node id.
  public let nodes: [String: MemoryNodeClient]

  /// Clients for `endpoints`.
  public init(
    endpoints: [MemoryNodeEndpoint], connectionsPerNode: Int = 2,
    defaultTimeout: Duration = .seconds(10)
  ) {
    var nodes: [String: MemoryNodeClient] = [:]
    for endpoint in endpoints {
      nodes[endpoint.id] = MemoryNodeClient(
        endpoint: endpoint, connections: connectionsPerNode, defaultTimeout: defaultTimeout)
    }
    self.nodes = nodes
  }

  /// A tier over existing clients (shared with other tiers).
  public init(clients: [MemoryNodeClient]) {
    var nodes: [String: MemoryNodeClient] = [:]
    for client in clients { nodes[client.endpoint.id] = client }
    self.nodes = nodes
  }

  /// The client of node `id`, or an error naming the unknown node.
  public func node(_ id: String) throws(HeteroKVError) -> MemoryNodeClient {
    guard let client = nodes[id] else {
      throw HeteroKVError(.unavailable, "no memory node \"\(id)\" is configured")
    }
    return client
  }

  /// Codes after which a request is tried on the next replica: the node is gone or does not
  /// hold the rows (it restarted, or the shard was never written there).
  public static let failoverCodes: Set<HeteroKVError.Code> = [
    .unavailable, .connectionClosed, .deadlineExceeded, .unknownShard, .unknownSequence,
    .indexOutOfRange,
  ]

  /// Sends every request at once; each goes to its first holder and, when that node cannot
  /// answer (``failoverCodes``), to the next. Partials come back in request order with the
  /// number answered by a replica. A request no holder answers is `dataUnavailable`, naming
  /// the nodes tried; any other failure is thrown as the node raised it.
  public func partialAttention(_ requests: [ReplicatedRequest], timeout: Duration? = nil)
    async throws(HeteroKVError) -> FanOutAnswer
  {
    try await startPartialAttention(requests, timeout: timeout).answer()
  }

  /// Sends every request now, each to its first healthy holder on a connection already made,
  /// and returns the fan-out to read later: a decode step starts each head's requests as
  /// soon as its selection is made and reads every answer at the end, with no task per
  /// request. Requests whose node has no connection yet are sent when the answer is read.
  public func startPartialAttention(_ requests: [ReplicatedRequest], timeout: Duration? = nil)
    -> PendingFanOut
  {
    let started = requests.map { remote -> PendingPartialAttention? in
      guard let first = healthyFirst(remote.holders).first, let client = nodes[first] else {
        return nil
      }
      return client.startPartialAttention(remote.request, timeout: timeout)
    }
    return PendingFanOut(tier: self, requests: requests, timeout: timeout, started: started)
  }

  /// `holders` with the nodes that are up first (each group in its given order): a node marked
  /// down is tried only when no healthy holder is left.
  public func healthyFirst(_ holders: [String]) -> [String] {
    guard holders.contains(where: { nodes[$0]?.isHealthy == false }) else { return holders }
    return holders.filter { nodes[$0]?.isHealthy != false }
      + holders.filter { nodes[$0]?.isHealthy == false }
  }

  /// Whether node `id` is configured and not marked down.
  public func isHealthy(_ id: String) -> Bool { nodes[id]?.isHealthy ?? false }

  /// One request, holder by holder: the partial and the index of the holder that answered
  /// (counted in the holders' given order, so answers from a replica count as failovers).
  /// `skipping` already failed with `tried`'s reason and is not asked again.
  fileprivate func answer(
    _ remote: ReplicatedRequest, timeout: Duration?, skipping: String? = nil,
    tried alreadyTried: [String] = []
  ) async -> Result<(AttentionPartial, Int), HeteroKVError> {
    var tried = alreadyTried
    let order = healthyFirst(remote.holders).filter { $0 != skipping }
    for node in order {
      let attempt = remote.holders.firstIndex(of: node) ?? 0
      do {
        let partial = try await self.node(node).partialAttention(remote.request, timeout: timeout)
        return .success((partial, attempt))
      } catch {
        tried.append("\(node) (\(error.code))")
        if !Self.failoverCodes.contains(error.code) { return .failure(error) }
      }
    }
    return .failure(
      HeteroKVError(
        .dataUnavailable,
        "shard \(remote.request.shard) is on no reachable memory node"
          + (tried.isEmpty ? " (no node holds it)" : "; tried \(tried.joined(separator: ", "))")))
  }

  /// Fans the requests out and merges the partials exactly (log-sum-exp) into the attention
  /// over the union of the rows they name. All requests must be for the same query heads.
  public func mergedAttention(_ requests: [ReplicatedRequest], timeout: Duration? = nil)
    async throws -> AttentionPartial
  {
    try AttentionPartial.merge(await partialAttention(requests, timeout: timeout).partials)
  }

  /// ``mergedAttention(_:timeout:)`` with one holder per request.
  public func mergedAttention(
    _ requests: [(node: String, request: PartialAttentionRequest)], timeout: Duration? = nil
  ) async throws -> AttentionPartial {
    try await mergedAttention(
      requests.map { ReplicatedRequest($0.request, holders: [$0.node]) }, timeout: timeout)
  }

  /// Closes every connection to every node.
  public func close() async {
    for client in nodes.values { await client.close() }
  }
}

/// A near-data attention request and the nodes that hold its rows, primary first.
public struct ReplicatedRequest: Sendable {
  /// The request.
  public var request: PartialAttentionRequest
  /// Node ids to try, in order.
  public var holders: [String]

  /// `request` for `holders`.
  public init(_ request: PartialAttentionRequest, holders: [String]) {
    self.request = request
    self.holders = holders
  }
}

/// Near-data requests already sent by ``MemoryTierClient/startPartialAttention(_:timeout:)``.
public struct PendingFanOut: Sendable {
  let tier: MemoryTierClient
  let requests: [ReplicatedRequest]
  let timeout: Duration?
  let started: [PendingPartialAttention?]

  /// The partials in request order, as ``MemoryTierClient/partialAttention(_:timeout:)``
  /// returns them. Answers that have arrived are taken without waiting; a request whose call
  /// failed with a ``MemoryTierClient/failoverCodes`` code is asked again (of the same node
  /// on a fresh connection when the connection was lost, else of the next holder), those
  /// retries in parallel.
  public func answer() async throws(HeteroKVError) -> FanOutAnswer {
    var answers = [(AttentionPartial, Int)?](repeating: nil, count: requests.count)
    var again: [(index: Int, skipping: String?, tried: [String])] = []
    for (i, call) in started.enumerated() {
      guard let call else {
        again.append((i, nil, []))
        continue
      }
      let node = call.client.endpoint.id
      do {
        let partial = try await call.value()
        answers[i] = (partial, requests[i].holders.firstIndex(of: node) ?? 0)
      } catch {
        guard MemoryTierClient.failoverCodes.contains(error.code) else { throw error }
        let lost = error.code == .connectionClosed || error.code == .unavailable
        again.append((i, lost ? nil : node, lost ? [] : ["\(node) (\(error.code))"]))
      }
    }
    if again.count == 1 {
      let retry = again[0]
      answers[retry.index] = try await tier.answer(
        requests[retry.index], timeout: timeout, skipping: retry.skipping, tried: retry.tried
      ).get()
    } else if !again.isEmpty {
      let tier = self.tier
      let requests = self.requests
      let timeout = self.timeout
      let outcome = await withTaskGroup(
        of: (Int, Result<(AttentionPartial, Int), HeteroKVError>).self
      ) { group -> HeteroKVError? in
        for retry in again {
          group.addTask {
            (
              retry.index,
              await tier.answer(
                requests[retry.index], timeout: timeout, skipping: retry.skipping,
                tried: retry.tried)
            )
          }
        }
        for await (i, result) in group {
          switch result {
          case .success(let value): answers[i] = value
          case .failure(let error):
            group.cancelAll()
            return error
          }
        }
        return nil
      }
      if let outcome { throw outcome }
    }
    let done = answers.map { $0! }
    return FanOutAnswer(partials: done.map(\.0), failovers: done.filter { $0.1 > 0 }.count)
  }
}

/// What a fan-out returns: partials in request order, and how many came from a replica
/// because the primary could not answer.
public struct FanOutAnswer: Sendable {
  /// One partial per request.
  public var partials: [AttentionPartial]
  /// Requests answered by a holder other than the first.
  public var failovers: Int
}
