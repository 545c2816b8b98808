import HeteroKVEngineClient
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVSettings
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
/// go out side by side. Each shard goes to every replica its placement names that is not
/// marked down; a batch counts as stored when the ``ReplicaAcknowledgement`` is met, and the
/// writer remembers which node holds which rows, so readers pick a node that has what they
/// need. When the placement changes (a node left), ``repair(placement:version:)`` copies
/// each shard from a node that holds it to the replicas it now lacks.
actor ShardWriter {
  let ref: SequenceRef
  let tier: MemoryTierClient
  private(set) var placement: RendezvousPlacement
  /// The placement version ``placement`` is.
  private(set) var placementVersion: UInt64
  let acknowledgement: ReplicaAcknowledgement
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
  /// Heads whose shards keep keys as well as values (copied with them on repair).
  private var keyed: Set<HeadKey> = []
  private(set) var bytesSent = 0
  /// Bytes the memory tier holds for the sequence, all copies.
  private(set) var storedBytes = 0
  /// Shards and bytes copied to new replicas by repair.
  private(set) var shardsCopied = 0
  private(set) var bytesCopied = 0

  init(
    ref: SequenceRef, tier: MemoryTierClient, placement: RendezvousPlacement,
    placementVersion: UInt64 = 1, acknowledgement: ReplicaAcknowledgement = .allLive,
    chunkTokens: Int, limitBytes: Int, maxRowsPerPut: Int = 8192, metrics: WorkerMetrics
  ) {
    self.metrics = metrics
    self.ref = ref
    self.tier = tier
    self.placement = placement
    self.placementVersion = placementVersion
    self.acknowledgement = acknowledgement
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

  /// Waits until every queued batch (and repair copy) is stored or has failed, including any
  /// queued while it waited.
  func flush() async {
    while true {
      let pending = tails
      for task in pending.values { await task.value }
      if tails.count == pending.count && pending.allSatisfy({ tails[$0.key] == $0.value }) {
        return
      }
    }
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
    if batch.keys != nil { keyed.insert(batch.head) }
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
      let replicas = placement.nodes(for: shard)
      // A node that missed earlier rows of this shard cannot take later ones (repair fills it
      // in); a node marked down is skipped unless no replica is up.
      let contiguous = replicas.filter {
        token == chunkStart ? ends[$0] == nil : ends[$0] == token
      }
      let live = contiguous.filter { tier.isHealthy($0) }
      let targets = live.isEmpty ? contiguous : live
      var errors: [String] = []
      var refusedByLiveNode = false
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
            if !MemoryNodeClient.unreachableCodes.contains(error.code) { refusedByLiveNode = true }
          } else {
            stored[Int(shard.layer), default: [:]][shard, default: [:]][node] = token + rows
            holders += 1
          }
        }
      }
      noteReplication(shard, end: token + rows)
      let bytes = rows * batch.values.cols * 2 * (batch.keys == nil ? 1 : 2)
      bytesSent += bytes * targets.count
      storedBytes += bytes * holders
      let acknowledged =
        switch acknowledgement {
        case .one: holders > 0
        case .allLive: holders > 0 && !refusedByLiveNode
        }
      guard acknowledged else {
        lost[batch.head] = HeteroKVError(
          .dataUnavailable,
          "sequence \(ref) layer \(batch.head.layer) head \(batch.head.kvHead): tokens "
            + "\(token)..<\(token + rows) "
            + (holders == 0 ? "reached no memory node" : "were refused by a live replica")
            + (errors.isEmpty ? "" : " (\(errors.joined(separator: "; ")))"))
        return
      }
      offset += rows
      self.acknowledged[batch.head] = token + rows
    }
  }

  /// Counts `shard` as under-replicated while fewer nodes than its placement names hold its
  /// rows through `end`, and as whole again once they all do.
  private func noteReplication(_ shard: ShardID, end: Int) {
    guard !dropped else { return }
    let ends = stored[Int(shard.layer)]?[shard] ?? [:]
    let replicas = placement.nodes(for: shard)
    let whole = replicas.allSatisfy { (ends[$0] ?? 0) >= end }
    if whole {
      if degraded.remove(shard) != nil { metrics.adjust(underReplicated: -1) }
    } else if degraded.insert(shard).inserted {
      metrics.adjust(underReplicated: 1)
    }
  }

  // MARK: Repair

  /// Adopts `placement` (version `version`) and copies every shard the writer stored to the
  /// replicas it now names but that lack its rows: from a node that holds them (a gather) to
  /// the new replica (puts of up to ``maxRowsPerPut`` rows), in each head's shipping order, so
  /// no put of the head races the copy. Nodes marked down are neither sources nor targets (a
  /// later pass picks them up). Returns once every head's copies are done or failed.
  func repair(placement next: RendezvousPlacement, version: UInt64) async -> RepairPass {
    guard !dropped else { return RepairPass(version: placementVersion, copied: 0, failed: 0) }
    if version > placementVersion {
      placement = next
      placementVersion = version
    }
    let heads = Set(acknowledged.keys).union(tails.keys)
    var tasks: [Task<RepairPass, Never>] = []
    for head in heads {
      let previous = tails[head]
      let task = Task { () -> RepairPass in
        await previous?.value
        return await self.repairHead(head)
      }
      tails[head] = Task { _ = await task.value }
      tasks.append(task)
    }
    var pass = RepairPass(version: placementVersion, copied: 0, failed: 0)
    for task in tasks {
      let part = await task.value
      pass.copied += part.copied
      pass.failed += part.failed
    }
    if pass.failed == 0 && degraded.isEmpty { await dropFromDeparted() }
    return pass
  }

  /// Once every shard is whole on the placement's nodes, drops the sequence from nodes that
  /// left the placement but still answer (a node whose lease lapsed while it kept running
  /// holds rows nobody will read or free); one that does not answer is tried at the next pass.
  private func dropFromDeparted() async {
    let members = Set(placement.nodes.map(\.id))
    let departed = Set(stored.values.flatMap { $0.values.flatMap(\.keys) }).subtracting(members)
    for node in departed.sorted() where tier.isHealthy(node) && !dropped {
      guard await dropSequence(on: node) else { continue }
      for layer in stored.keys {
        for shard in stored[layer]!.keys { stored[layer]![shard]![node] = nil }
      }
    }
  }

  /// One head's copies: each of its shards, to each replica that lacks acknowledged rows.
  private func repairHead(_ head: HeadKey) async -> RepairPass {
    var pass = RepairPass(version: placementVersion, copied: 0, failed: 0)
    let through = acknowledged[head] ?? 0
    guard through > 0, lost[head] == nil, !dropped else { return pass }
    for chunk in 0...((through - 1) / chunkTokens) {
      let shard = ref.shard(layer: head.layer, kvHead: head.kvHead, chunk: chunk)
      let chunkStart = chunk * chunkTokens
      let end = min(through, chunkStart + chunkTokens)
      let ends = stored[head.layer]?[shard] ?? [:]
      let replicas = placement.nodes(for: shard)
      let sources =
        replicas.filter { (ends[$0] ?? 0) >= end && tier.isHealthy($0) }
        + ends.keys.sorted().filter {
          !replicas.contains($0) && ends[$0]! >= end && tier.isHealthy($0)
        }
      for target in replicas where (ends[target] ?? chunkStart) < end && tier.isHealthy(target) {
        var done = false
        for source in sources where !dropped {
          let from = stored[head.layer]?[shard]?[target] ?? chunkStart
          if await copy(
            shard, from: source, to: target, rows: from..<end, keys: keyed.contains(head))
          {
            done = true
            break
          }
        }
        guard !dropped else { return pass }
        if done { pass.copied += 1 } else { pass.failed += 1 }
      }
      noteReplication(shard, end: end)
    }
    return pass
  }

  /// Copies `rows` of `shard` from `source` to `target`; true when all arrived.
  private func copy(
    _ shard: ShardID, from source: String, to target: String, rows: Range<Int>, keys: Bool
  ) async -> Bool {
    var start = rows.lowerBound
    while start < rows.upperBound {
      guard !dropped else { return false }
      let count = min(maxRowsPerPut, rows.upperBound - start)
      let headDim: Int
      do {
        let got = try await tier.node(source).gather(
          GatherRequest(
            shard: shard, tokens: (start..<(start + count)).map { UInt32($0) },
            includeKeys: keys))
        guard got.rowCount == count, got.values.readableBytes == count * got.headDim * 2,
          !keys || got.keys?.readableBytes == got.values.readableBytes
        else { return false }
        headDim = got.headDim
        _ = try await tier.node(target).put(
          PutRequest(
            shard: shard, startToken: UInt32(start), headDim: got.headDim, rowCount: count,
            values: got.values, keys: keys ? got.keys : nil))
      } catch {
        // A put that timed out earlier may have landed: learn where the node's rows end and
        // go on from there.
        if let end = PutRequest.expectedStart(inRefusal: error), end > start, end <= rows.upperBound
        {
          stored[Int(shard.layer), default: [:]][shard, default: [:]][target] = end
          start = end
          continue
        }
        return false
      }
      // Dropped while the copy was on its way: the release's drop may have run before the
      // put landed, so drop it again rather than leave the rows behind.
      if dropped {
        _ = await dropSequence(on: target)
        return false
      }
      stored[Int(shard.layer), default: [:]][shard, default: [:]][target] = start + count
      let bytes = count * headDim * 2 * (keys ? 2 : 1)
      bytesCopied += bytes
      storedBytes += bytes
      start += count
    }
    shardsCopied += 1
    return true
  }

  /// Drops the sequence's rows on `node`; true when the node answered (a node holding none of
  /// them, that never took rows or dropped them already, answers too).
  private func dropSequence(on node: String) async -> Bool {
    do {
      _ = try await tier.node(node).drop(.sequence(ref.sequence, namespace: ref.namespace))
      return true
    } catch {
      return error.code == .unknownSequence
    }
  }

  /// Drops the sequence's shards from every node of the placement; returns the nodes that
  /// could not be reached.
  func dropAll() async -> [String] {
    // First: no batch or repair copy starts after this point.
    dropped = true
    await flush()
    var unreachable: [String] = []
    // Every node of the placement, and any that holds rows from before the placement changed.
    let holders = Set(stored.values.flatMap { $0.values.flatMap(\.keys) })
    let nodes = placement.nodes.map(\.id) + holders.subtracting(placement.nodes.map(\.id)).sorted()
    for node in nodes {
      // A node marked down is not waited for: its rows are gone with it, or the coordinator
      // has it drop them.
      guard tier.isHealthy(node) else {
        unreachable.append(node)
        continue
      }
      if !(await dropSequence(on: node)) { unreachable.append(node) }
    }
    // The sequence's shards are gone (or will be reclaimed): none is under-replicated now.
    if !degraded.isEmpty {
      metrics.adjust(underReplicated: -degraded.count)
      degraded = []
    }
    return unreachable
  }
}

/// What one repair pass did: the placement version it repaired to, and the shard copies it
/// made and could not make (no live source, or a node failed mid-copy).
struct RepairPass: Sendable, Hashable {
  var version: UInt64
  var copied: Int
  var failed: Int
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
