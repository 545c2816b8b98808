import HeteroKVEngineClient
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

/// One KV head of one layer of a sequence.
struct HeadKey: Hashable, Sendable {
  var layer: Int
  var kvHead: Int
}

/// Rows of one head on their way to the memory tier: tokens `start ..< start + rows`.
struct ShipBatch: Sendable {
  var head: HeadKey
  var start: Int
  var values: HalfMatrix
  /// Keys go too where the memory tier keeps them (exact re-scoring, satellite refresh).
  var keys: HalfMatrix?

  var rows: Int { values.rows }
  var byteCount: Int { values.byteCount + (keys?.byteCount ?? 0) }
}

/// Ships a sequence's rows to the memory nodes that own their shards, asynchronously, behind a
/// bounded queue: `enqueue` returns at once while fewer than `limitBytes` are in flight and
/// waits otherwise, so the engine is never blocked beyond that bound. A head's batches are
/// stored in order (a shard only takes the next contiguous rows); batches of different heads
/// go out side by side. Each shard goes to every replica its placement names; a batch counts
/// as stored once one replica holds it, and the writer remembers which node holds which rows,
/// so readers pick a node that has what they need.
actor ShardWriter {
  let ref: SequenceRef
  let tier: MemoryTierClient
  let placement: RendezvousPlacement
  let chunkTokens: Int
  let limitBytes: Int
  /// Rows per put request.
  let maxRowsPerPut: Int
  let metrics: WorkerMetrics

  private var inFlightBytes = 0
  private var waiters: [CheckedContinuation<Void, Never>] = []
  private var tails: [HeadKey: Task<Void, Never>] = [:]
  private var acknowledged: [HeadKey: Int] = [:]
  /// Per layer, shard and node: the end (exclusive) of the rows that node holds (by layer, so
  /// a decode step's ``shipping(layer:kvHeads:)`` hands out its layer's without a scan).
  private var stored: [Int: [ShardID: [String: Int]]] = [:]
  private var lost: [HeadKey: HeteroKVError] = [:]
  /// Shards some replica of which missed rows: fewer copies than the placement asks for.
  private var degraded: Set<ShardID> = []
  /// Set by `dropAll`: the sequence's rows are gone and no more are shipped.
  private var dropped = false
  private(set) var bytesSent = 0
  /// Bytes the memory tier holds for the sequence, all copies.
  private(set) var storedBytes = 0

  init(
    ref: SequenceRef, tier: MemoryTierClient, placement: RendezvousPlacement, chunkTokens: Int,
    limitBytes: Int, maxRowsPerPut: Int = 8192, metrics: WorkerMetrics
  ) {
    self.metrics = metrics
    self.ref = ref
    self.tier = tier
    self.placement = placement
    self.chunkTokens = chunkTokens
    self.limitBytes = limitBytes
    self.maxRowsPerPut = maxRowsPerPut
  }

  /// Queues `batch`, waiting while the queue is full; nothing once the sequence was dropped.
  func enqueue(_ batch: ShipBatch) async {
    guard !dropped else { return }
    let bytes = batch.byteCount
    while inFlightBytes > 0 && inFlightBytes + bytes > limitBytes {
      await withCheckedContinuation { waiters.append($0) }
    }
    inFlightBytes += bytes
    let previous = tails[batch.head]
    tails[batch.head] = Task {
      await previous?.value
      await self.ship(batch)
      self.finished(bytes: bytes)
    }
  }

  private func finished(bytes: Int) {
    inFlightBytes -= bytes
    let ready = waiters
    waiters = []
    for waiter in ready { waiter.resume() }
  }

  /// Waits until every queued batch is stored or has failed.
  func flush() async {
    for task in tails.values { await task.value }
  }

  /// Tokens `0 ..< n` of `head` that at least one node holds.
  func acknowledgedTokens(_ head: HeadKey) -> Int { acknowledged[head] ?? 0 }

  /// The failure that left `head` with rows on no node, if any.
  func failure(_ head: HeadKey) -> HeteroKVError? { lost[head] }

  /// Nodes holding rows of `shard` through token `last` (inclusive), primary first.
  func holders(_ shard: ShardID, through last: Int) -> [String] {
    shipping(layer: Int(shard.layer), kvHeads: 0).holders(shard, through: last)
  }

  /// Queues `batches` in order (waiting as ``enqueue(_:)`` does), then reports every head of
  /// `layer`: one actor hop for a decode step's append instead of one per head and question.
  func enqueue(_ batches: [ShipBatch], reporting layer: Int, kvHeads: Int) async -> LayerShipping {
    for batch in batches { await enqueue(batch) }
    return shipping(layer: layer, kvHeads: kvHeads)
  }

  /// What the memory tier holds of `layer`'s heads, in one call (one hop for a decode step's
  /// attend): acknowledged tokens, failures, and which node holds which rows of each shard.
  func shipping(layer: Int, kvHeads: Int) -> LayerShipping {
    let heads = (0..<kvHeads).map { HeadKey(layer: layer, kvHead: $0) }
    return LayerShipping(
      acknowledged: heads.map { acknowledged[$0] ?? 0 }, failures: heads.map { lost[$0] },
      stored: stored[layer] ?? [:], placement: placement)
  }

  /// Shards held in full by fewer nodes than their placement names.
  var underReplicatedShards: Int { degraded.count }

  /// The shard chunk of a token.
  nonisolated func chunk(of token: Int) -> Int { token / chunkTokens }

  private func ship(_ batch: ShipBatch) async {
    if lost[batch.head] != nil || dropped { return }
    var offset = 0
    while offset < batch.rows {
      let token = batch.start + offset
      let chunkEnd = (chunk(of: token) + 1) * chunkTokens
      let rows = min(batch.rows - offset, chunkEnd - token, maxRowsPerPut)
      let range = Array(offset..<(offset + rows))
      let shard = ref.shard(
        layer: batch.head.layer, kvHead: batch.head.kvHead, chunk: chunk(of: token))
      let request = PutRequest(
        shard: shard, startToken: UInt32(token), headDim: batch.values.cols,
        values: batch.values.gather(range).storage, keys: batch.keys?.gather(range).storage)
      let chunkStart = chunk(of: token) * chunkTokens
      let ends = stored[Int(shard.layer)]?[shard] ?? [:]
      // A node that missed earlier rows of this shard cannot take later ones.
      let targets = placement.nodes(for: shard).filter {
        token == chunkStart ? ends[$0] == nil : ends[$0] == token
      }
      var errors: [String] = []
      var holders = 0
      await withTaskGroup(of: (String, HeteroKVError?).self) { group in
        for node in targets {
          let tier = self.tier
          group.addTask {
            do {
              _ = try await tier.node(node).put(request)
              return (node, nil)
            } catch {
              return (
                node,
                error as? HeteroKVError ?? HeteroKVError(.internalError, "\(error)", cause: error)
              )
            }
          }
        }
        for await (node, error) in group {
          if let error {
            errors.append("\(node): \(error.message)")
          } else {
            stored[Int(shard.layer), default: [:]][shard, default: [:]][node] = token + rows
            holders += 1
          }
        }
      }
      if holders < placement.nodes(for: shard).count, degraded.insert(shard).inserted {
        metrics.adjust(underReplicated: 1)
      }
      let bytes = rows * batch.values.cols * 2 * (batch.keys == nil ? 1 : 2)
      bytesSent += bytes * targets.count
      storedBytes += bytes * holders
      guard holders > 0 else {
        lost[batch.head] = HeteroKVError(
          .dataUnavailable,
          "sequence \(ref) layer \(batch.head.layer) head \(batch.head.kvHead): tokens "
            + "\(token)..<\(token + rows) reached no memory node"
            + (errors.isEmpty ? "" : " (\(errors.joined(separator: "; ")))"))
        return
      }
      offset += rows
      acknowledged[batch.head] = token + rows
    }
  }

  /// Drops the sequence's shards from every node of the placement; returns the nodes that
  /// could not be reached.
  func dropAll() async -> [String] {
    await flush()
    dropped = true
    var unreachable: [String] = []
    for node in placement.nodes.map(\.id) {
      do {
        _ = try await tier.node(node).drop(
          .sequence(ref.sequence, namespace: ref.namespace))
      } catch {
        unreachable.append(node)
      }
    }
    // The sequence's shards are gone (or will be reclaimed): none is under-replicated now.
    if !degraded.isEmpty {
      metrics.adjust(underReplicated: -degraded.count)
      degraded = []
    }
    return unreachable
  }
}

/// A layer's shipping state as ``ShardWriter/shipping(layer:kvHeads:)`` saw it: a value, read
/// without further hops while the step plans its requests.
struct LayerShipping: Sendable {
  /// Per KV head, tokens `0 ..< n` that at least one node holds.
  var acknowledged: [Int]
  /// Per KV head, the failure that left it with rows on no node.
  var failures: [HeteroKVError?]
  /// Per shard of the layer and node, the end (exclusive) of the rows that node holds.
  var stored: [ShardID: [String: Int]]
  let placement: RendezvousPlacement

  /// Nodes holding rows of `shard` through token `last` (inclusive), primary first.
  func holders(_ shard: ShardID, through last: Int) -> [String] {
    let ends = stored[shard] ?? [:]
    return placement.nodes(for: shard).filter { (ends[$0] ?? 0) > last }
  }
}
