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

  /// Sends each request to its node, all at once, and returns the partials in request order.
  /// The first failure is thrown (the others are cancelled).
  public func partialAttention(
    _ requests: [(node: String, request: PartialAttentionRequest)], timeout: Duration? = nil
  ) async throws(HeteroKVError) -> [AttentionPartial] {
    let clients = try requests.map { (r) throws(HeteroKVError) in try node(r.node) }
    do {
      return try await withThrowingTaskGroup(of: (Int, AttentionPartial).self) { group in
        for (i, entry) in requests.enumerated() {
          let client = clients[i]
          group.addTask { (i, try await client.partialAttention(entry.request, timeout: timeout)) }
        }
        var results = [AttentionPartial?](repeating: nil, count: requests.count)
        for try await (i, partial) in group { results[i] = partial }
        return results.map { $0! }
      }
    } catch let error as HeteroKVError {
      throw error
    } catch {
      throw HeteroKVError(.internalError, "\(error)")
    }
  }

  /// Fans the requests out and merges the partials exactly (log-sum-exp) into the attention
  /// over the union of the rows they name. All requests must be for the same query heads.
  public func mergedAttention(
    _ requests: [(node: String, request: PartialAttentionRequest)], timeout: Duration? = nil
  ) async throws -> AttentionPartial {
    try AttentionPartial.merge(await partialAttention(requests, timeout: timeout))
  }

  /// Closes every connection to every node.
  public func close() async {
    for client in nodes.values { await client.close() }
  }
}
