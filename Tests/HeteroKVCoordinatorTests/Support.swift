import Foundation
import HeteroKVConfig
import HeteroKVCoordinator
import HeteroKVCore
import HeteroKVWire
import HeteroKVTestSupport
import Logging
import Metrics
import Synchronization

/// A clock the test moves by hand.
final class ManualClock: Sendable {
  private let seconds = Mutex<Double>(0)
  func now() -> Double { seconds.withLock { $0 } }
  func advance(_ by: Double) { seconds.withLock { $0 += by } }
}

/// A small cluster: a model of 2 layers x 4 KV heads (head dim 64) and a coordinator.
func testCluster(
  policy: BudgetPolicyKind = .heterocache, replication: Int = 1, lease: Double = 5,
  stateDir: String = "/nonexistent", minTokens: Int = 16, maxTokens: Int? = nil
) throws -> ClusterConfiguration {
  ClusterConfiguration(
    name: "test",
    model: try ModelGeometry(name: "tiny", layers: 2, queryHeads: 8, kvHeads: 4, headDim: 64),
    coordinator: CoordinatorSettings(
      control: HostPort(host: "127.0.0.1", port: 0), stateDirectory: stateDir,
      leaseSeconds: lease, heartbeatSeconds: lease / 4),
    memoryNodes: [],
    budgets: BudgetSettings(
      policy: policy, memoryFraction: 0.3, minTokens: minTokens, maxTokens: maxTokens),
    replication: replication)
}

/// Profiles for every head of `layers` x 4 heads: head 0 a pivot with head 1 its satellite,
/// head 2 an anchor, head 3 volatile, with stabilities that differ by layer.
func testProfiles(layers: Int = 2) -> [HeadProfile] {
  (0..<layers).flatMap { layer in
    let roles: [HeadRole] = [.pivot, .satellite(pivot: 0), .anchor, .volatile]
    return (0..<4).map { head in
      HeadProfile(
        layer: layer, kvHead: head, stability: [0.4, 0.3 + 0.1 * Double(layer), 0.9, 0.2][head],
        similarity: (0..<4).map { $0 == head ? 1 : ($0 + head == 1 ? 0.8 : 0.1) },
        role: roles[head])
    }
  }
}

/// A fresh temporary directory.
func temporaryDirectory() -> String {
  let path = NSTemporaryDirectory() + "hkv-coordinator-test-" + UUID().uuidString
  try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

extension Coordinator {
  /// Registers memory nodes `m0`... with `capacity` bytes each.
  func addMemoryNodes(_ count: Int, capacity: UInt64 = 1 << 30) async throws {
    for i in 0..<count {
      _ = try await register(
        id: "m\(i)", role: .memoryNode, dataAddress: "127.0.0.1:\(7100 + i)",
        controlAddress: "127.0.0.1:\(7200 + i)", capacityBytes: capacity, transport: "tcp")
    }
  }
}
