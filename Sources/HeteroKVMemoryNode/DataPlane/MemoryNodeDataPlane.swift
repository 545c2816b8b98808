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

  public func handle(opcode: Opcode, payload: ByteBuffer, allocator: ByteBufferAllocator)
    -> Result<ByteBuffer, DataPlaneError>
  {
    let started = ContinuousClock.now
    let result = Result { () throws(DataPlaneError) -> ByteBuffer in
      try serve(opcode, payload, allocator)
    }
    let elapsed = ContinuousClock.now - started
    let (seconds, attos) = elapsed.components
    metrics.record(
      opcode, success: (try? result.get()) != nil,
      nanoseconds: seconds * 1_000_000_000 + attos / 1_000_000_000,
      bytesIn: payload.readableBytes, bytesOut: (try? result.get())?.readableBytes ?? 0)
    if opcode == .put || opcode == .drop {
      let stats = store.stats()
      metrics.usedBytes.record(Int(stats.usedBytes))
      metrics.storedBytes.record(Int(stats.storedBytes))
      metrics.shards.record(Int(stats.shardCount))
    }
    return result
  }

  public func rejected(_ error: DataPlaneError) { metrics.rejected() }

  private func serve(_ opcode: Opcode, _ payload: ByteBuffer, _ allocator: ByteBufferAllocator)
    throws(DataPlaneError) -> ByteBuffer
  {
    let limits = store.limits
    switch opcode {
    case .put:
      return try store.put(PutRequest(payload: payload, limits: limits)).encoded(
        allocator: allocator)
    case .drop:
      return try store.drop(DropRequest(payload: payload, limits: limits)).encoded(
        allocator: allocator)
    case .gather:
      return try store.gather(GatherRequest(payload: payload, limits: limits), allocator: allocator)
    case .partialAttention:
      return try store.partialAttention(PartialAttentionRequest(payload: payload, limits: limits))
        .encoded(allocator: allocator)
    case .stats:
      _ = try StatsRequest(payload: payload, limits: limits)
      return store.stats().encoded(allocator: allocator)
    case .ping:
      _ = try PingRequest(payload: payload, limits: limits)
      return allocator.buffer(capacity: 0)
    }
  }
}
