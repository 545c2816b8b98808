import GRPCCore
import HeteroKVTransport
import HeteroKVWire

/// The memory node's gRPC control and admin service: describe, statistics, shard listing and
/// dropping a sequence (see `Proto/heterokv/v1/memory_node.proto`).
public struct MemoryNodeControlService: Heterokv_V1_MemoryNodeControl.SimpleServiceProtocol {
  /// What `Describe` answers.
  public struct Identity: Sendable {
    public var nodeID: String
    public var transport: DataPlaneTransportKind
    public var dataAddress: HostPort
    public var transportNote: String
  }

  let identity: Identity
  let store: ShardStore
  let metrics: MemoryNodeMetrics
  let started: ContinuousClock.Instant

  init(identity: Identity, store: ShardStore, metrics: MemoryNodeMetrics) {
    self.identity = identity
    self.store = store
    self.metrics = metrics
    self.started = .now
  }

  public func describe(request: Heterokv_V1_DescribeRequest, context: ServerContext) async throws
    -> Heterokv_V1_NodeDescription
  {
    .with {
      $0.nodeID = identity.nodeID
      $0.dataTransport = identity.transport.rawValue
      $0.dataAddress = identity.dataAddress.description
      $0.capacityBytes = UInt64(store.pool.capacityBytes)
      $0.pageBytes = UInt64(store.pool.pageBytes)
      $0.wireVersion = UInt32(FrameHeader.currentVersion)
      $0.transportNote = identity.transportNote
    }
  }

  public func getStats(request: Heterokv_V1_GetStatsRequest, context: ServerContext) async throws
    -> Heterokv_V1_MemoryNodeStats
  {
    let stats = store.stats()
    let counts = metrics.requestCounts()
    return .with {
      $0.nodeID = identity.nodeID
      $0.capacityBytes = stats.capacityBytes
      $0.usedBytes = stats.usedBytes
      $0.storedBytes = stats.storedBytes
      $0.shardCount = stats.shardCount
      $0.sequenceCount = stats.sequenceCount
      $0.rowCount = stats.rowCount
      $0.uptimeSeconds = UInt64(max(0, (ContinuousClock.now - started).components.seconds))
      $0.operations = Opcode.allCases.map { op in
        .with {
          $0.operation = op.name
          $0.ok = counts[op]?.ok ?? 0
          $0.failed = counts[op]?.failed ?? 0
        }
      }
    }
  }

  public func listShards(request: Heterokv_V1_ListShardsRequest, context: ServerContext)
    async throws -> Heterokv_V1_ListShardsResponse
  {
    let summaries =
      request.filterBySequence
      ? store.summaries(namespace: request.namespace, sequence: request.sequence)
      : store.summaries()
    return .with {
      $0.shards = summaries.map { s in
        .with {
          $0.shard = .with {
            $0.namespace = s.shard.namespace
            $0.sequence = s.shard.sequence
            $0.layer = UInt32(s.shard.layer)
            $0.kvHead = UInt32(s.shard.kvHead)
            $0.chunk = s.shard.chunk
          }
          $0.headDim = UInt32(s.headDim)
          $0.startToken = s.startToken
          $0.rowCount = UInt32(s.rowCount)
          $0.storesKeys = s.hasKeys
          $0.bytes = UInt64(s.pageBytes)
        }
      }
    }
  }

  public func dropSequence(request: Heterokv_V1_DropSequenceRequest, context: ServerContext)
    async throws -> Heterokv_V1_DropSequenceResponse
  {
    let drop =
      request.wholeNamespace
      ? DropRequest.namespace(request.namespace)
      : DropRequest.sequence(request.sequence, namespace: request.namespace)
    do {
      let response = try store.drop(drop)
      return .with {
        $0.shardsDropped = response.shardsDropped
        $0.bytesFreed = response.bytesFreed
      }
    } catch {
      throw RPCError(
        code: error.code == .unknownSequence ? .notFound : .invalidArgument, message: error.message)
    }
  }
}
