import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

// Releasing the sequence, its figures, and waiting for its rows to land.
extension SequenceSession {
  // MARK: Release and stats

  /// Flushes, drops the rows from every node and closes the sequence at the coordinator.
  /// From its start the session refuses every later call (those queued behind it too).
  ///
  /// A node that cannot be reached (dead, or cut off) does not fail the release: its rows
  /// are gone with it, or will be dropped when the coordinator reclaims the sequence. Such
  /// nodes are logged by the caller (``ReleaseOutcome/unreachableNodes``) and counted in
  /// `hkv_worker_release_unreachable_nodes_total`. A coordinator that cannot be reached does
  /// not fail it either: ``ReleaseOutcome/coordinatorPending`` says the close must be retried
  /// (the worker does so in the background). A coordinator that no longer knows the
  /// sequence (it closed it when the worker's lease lapsed) is a success. Any other refusal
  /// is thrown, and the release may be called again.
  func release() async throws(HeteroKVError) -> ReleaseOutcome {
    await enter()
    defer { leave() }
    poisoned = HeteroKVError(.unknownSequence, "sequence \(ref) was released")
    for task in refreshTasks.values { task.cancel() }
    let storedBytes = await writer.storedBytes
    let unreachable = await writer.dropAll()
    metrics.releaseMissed(nodes: unreachable.count)
    if !released {
      released = true
      metrics.adjust(resident: -layerResident.reduce(0, +))
      layerResident = layerResident.map { _ in 0 }
    }
    var pending = false
    do {
      try await control.closeSequence(ref, undroppedNodes: unreachable)
    } catch  where error.code == .notFound || error.code == .unknownSequence {
      // Already closed by the coordinator.
    } catch  where MemoryNodeClient.unreachableCodes.contains(error.code) {
      pending = true
    }
    return ReleaseOutcome(
      releasedBytes: storedBytes, unreachableNodes: unreachable,
      coordinatorPending: pending ? unreachable : nil)
  }

  /// Where the sequence's bytes are and what its steps moved.
  func stats() async -> SequenceStats {
    let g = geometry
    let tokens = layers.map(\.tokens).max() ?? 0
    var heads: [SequenceStats.Head] = []
    var unshipped = 0
    var storedRows = 0
    for l in layers.indices {
      for h in layers[l].heads.indices {
        let ack = await writer.acknowledgedTokens(HeadKey(layer: l, kvHead: h))
        layers[l].heads[h].trimTail(acknowledged: ack)
        storedRows += ack
      }
    }
    for (l, layer) in layers.enumerated() {
      for (h, head) in layer.heads.enumerated() {
        heads.append(
          .init(
            layer: l, kvHead: h, role: head.role, cap: head.cap, residentBytes: head.residentBytes))
        unshipped += head.tailValues.rows
      }
    }
    let sent = await writer.bytesSent
    return SequenceStats(
      ref: ref, tokens: tokens, prefillTokens: prefillTokens, policy: options.policy,
      workerBytes: heads.reduce(0) { $0 + $1.residentBytes },
      memoryTierBytes: await writer.storedBytes,
      fullKVBytes: layers.reduce(0) { $0 + $1.tokens * g.kvHeads * g.headDim * 4 },
      decodeSteps: decodeSteps, bytesMoved: bytesMoved + sent,
      refreshes: refreshes, failovers: failovers, unshippedRows: unshipped, storedRows: storedRows,
      keptTokens: keptTokens, contextTokens: contextTokens,
      decodeBytesMoved: sealed ? bytesMoved + sent - prefillBytesSent : 0,
      underReplicatedShards: await writer.underReplicatedShards, heads: heads)
  }

  /// Waits for the background work that decode steps started (rows being shipped, satellites
  /// being refreshed) to end, and changes nothing the sequence holds: a benchmark charges that
  /// work to this sequence rather than to whatever runs next.
  func settle() async {
    await writer.flush()
    for task in Array(refreshTasks.values) { await task.value }
  }

  /// Waits until every row is on the memory tier (for tests and benchmarks).
  func flush() async {
    await writer.flush()
    for l in layers.indices {
      for h in layers[l].heads.indices {
        let ack = await writer.acknowledgedTokens(HeadKey(layer: l, kvHead: h))
        layers[l].heads[h].trimTail(acknowledged: ack)
      }
      noteResident(layer: l)
    }
  }
}
