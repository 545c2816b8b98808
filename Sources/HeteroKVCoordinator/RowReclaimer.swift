import GRPCCore
import HeteroKVControlPlane
import HeteroKVCore
import HeteroKVWire
import Logging

/// Tells memory nodes to drop the rows of sequences the coordinator closed with rows left
/// behind (``Coordinator/pendingDrops()``), through each node's control service.
struct RowReclaimer: Sendable {
  let coordinator: Coordinator
  let security: ControlPlaneSecurity
  let logger: Logger

  /// Calls `DropSequence` on every node that still holds rows of a sequence the coordinator
  /// closed, the nodes side by side; a node that answers (or no longer knows the sequence) is
  /// recorded as done, and the first failure to reach a node skips its other drops until the
  /// next tick (or until it is down, when they are forgotten).
  func run() async throws {
    let drops = try await coordinator.pendingDrops()
    guard !drops.isEmpty else { return }
    let byNode = Dictionary(grouping: drops, by: \.nodeID)
    try await withThrowingDiscardingTaskGroup { group in
      for (node, drops) in byNode {
        group.addTask { try await self.drop(drops, on: node) }
      }
    }
  }

  private func drop(_ drops: [PendingDrop], on node: String) async throws {
    guard let address = drops.first.flatMap({ HostPort($0.controlAddress) }) else { return }
    do {
      try await ControlPlaneClient.with(address: address, security: security) { grpc in
        let client = Heterokv_V1_MemoryNodeControl.Client(wrapping: grpc)
        var options = CallOptions.defaults
        options.timeout = .seconds(2)
        for drop in drops {
          var dropped: UInt32 = 0
          do {
            dropped =
              try await client.dropSequence(
                .with {
                  $0.namespace = drop.key.namespace
                  $0.sequence = drop.key.sequence
                }, options: options
              ).shardsDropped
          } catch let error as RPCError where error.code == .notFound {
          }
          try await coordinator.rowsDropped(drop.key, nodes: [node])
          logger.info(
            "dropped the rows of a closed sequence",
            metadata: ["sequence": "\(drop.key)", "node": "\(node)", "shards": "\(dropped)"])
        }
      }
    } catch let error as HeteroKVError {
      throw error
    } catch {
      logger.warning(
        "cannot reach a memory node to drop closed sequences; will retry",
        metadata: ["node": "\(node)", "sequences": "\(drops.count)", "error": "\(error)"])
    }
  }
}
