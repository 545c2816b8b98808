import HeteroKVCore
import HeteroKVTransport
import HeteroKVWire
import NIOCore

/// Serves the data plane of a memory node: decodes each request, runs it against the
/// ``ShardStore`` and encodes the answer; counts and times every request.
public struct MemoryNodeDataPlane: DataPlaneRequestHandler {
  /// The rows served.
  public let store: ShardStore
  /// Request counters and gauges.
  public let metrics: MemoryNodeMetrics

  /// A handler over `store`.
  public init(store: ShardStore, metrics: MemoryNodeMetrics) {
    self.store = store
    self.metrics = metrics
    metrics.capacityBytes.record(store.pool.capacityBytes)
  }

  public func handle(
    opcode: Opcode, payload: ByteBuffer, allocator: ByteBufferAllocator, grant: DataPlaneGrant
  ) -> Result<ByteBuffer, HeteroKVError> {
    let started = ContinuousClock.now
    let result = Result { () throws(HeteroKVError) -> ByteBuffer in
      try serve(opcode, payload, allocator, grant)
    }
    let response = try? result.get()
    metrics.record(
      opcode, success: response != nil,
      nanoseconds: (ContinuousClock.now - started).nanoseconds,
      bytesIn: payload.readableBytes, bytesOut: response?.readableBytes ?? 0)
    if opcode == .put || opcode == .drop {
      let usage = store.usage()
      metrics.usedBytes.record(usage.usedBytes)
      metrics.storedBytes.record(usage.storedBytes)
      metrics.shards.record(usage.shardCount)
    }
    return result
  }

  public func rejected(_ error: HeteroKVError) { metrics.rejected() }

  /// Every request that names rows is checked against the connection's namespaces before it
  /// touches the store.
  private func serve(
    _ opcode: Opcode, _ payload: ByteBuffer, _ allocator: ByteBufferAllocator,
    _ grant: DataPlaneGrant
  ) throws(HeteroKVError) -> ByteBuffer {
    let limits = store.limits
    switch opcode {
    case .put:
      let request = try PutRequest(payload: payload, limits: limits)
      try grant.check(request.shard.namespace, "put")
      return try store.put(request, quota: grant).encoded(allocator: allocator)
    case .drop:
      let request = try DropRequest(payload: payload, limits: limits)
      try grant.check(request.shard.namespace, "drop")
      return try store.drop(request).encoded(allocator: allocator)
    case .gather:
      let request = try GatherRequest(payload: payload, limits: limits)
      try grant.check(request.shard.namespace, "gather")
      return try store.gather(request, allocator: allocator)
    case .partialAttention:
      let request = try PartialAttentionRequest(payload: payload, limits: limits)
      try grant.check(request.shard.namespace, "partial attention")
      return try store.partialAttention(request).encoded(allocator: allocator)
    case .stats:
      _ = try StatsRequest(payload: payload, limits: limits)
      return store.stats().encoded(allocator: allocator)
    case .ping:
      _ = try PingRequest(payload: payload, limits: limits)
      return allocator.buffer(capacity: 0)
    case .challenge, .authenticate:
      // The transport answers these before a request reaches the node.
      throw HeteroKVError(.internalError, "\(opcode.name) reached the node's handler")
    }
  }
}
