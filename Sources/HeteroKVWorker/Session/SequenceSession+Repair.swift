import HeteroKVCore
import HeteroKVEngineClient
import HeteroKVMemoryClient

// Keeping the sequence's copies: placement changes learned from the coordinator, and the
// shards they leave short of replicas copied from the nodes that hold them.
extension SequenceSession {
  /// Fetches the placement and repairs the shards it leaves short, when a node of the
  /// placement is marked down, a shard is under-replicated, or `force` (a periodic check that
  /// catches a node that left between steps); then reports to the coordinator. Runs beside
  /// the sequence's calls (the writer orders each head's copies with its puts); failures are
  /// left for the next check.
  func maintainReplicas(force: Bool) async {
    guard !released, poisoned == nil else { return }
    let short = await writer.underReplicatedShards
    let suspect = await writer.placement.nodes.contains { !tier.isHealthy($0.id) }
    guard force || short > 0 || suspect else { return }
    guard let current = try? await control.placement(ref) else { return }
    let known = await writer.placementVersion
    guard current.version > known || short > 0 else { return }
    let started = ContinuousClock.now
    let pass = await writer.repair(placement: current.rendezvous, version: current.version)
    let remaining = await writer.underReplicatedShards
    if pass.copied > 0 || pass.failed > 0 {
      metrics.repaired(
        shards: pass.copied, failed: pass.failed,
        nanoseconds: (ContinuousClock.now - started).nanoseconds)
    }
    let report = ReplicationReport(
      placementVersion: pass.version, underReplicatedShards: remaining,
      shardsCopied: await writer.shardsCopied, bytesCopied: await writer.bytesCopied)
    _ = try? await control.reportReplication(ref, report: report)
  }
}
