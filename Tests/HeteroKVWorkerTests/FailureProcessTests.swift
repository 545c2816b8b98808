import Foundation
import HeteroKVConfig
import HeteroKVControlPlane
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVTestSupport
import HeteroKVWire
import HeteroKVWorker
import Testing

/// A cluster file for the tiny model: a coordinator with a short lease, `nodes` memory nodes on
/// ports of their own choosing, and a worker that keeps everything (tau 1, exact outputs), so
/// every output is exact attention and any lost or wrong row shows.
func failureClusterFile(
  directory: URL, coordinatorPort: Int, nodes: Int, replication: Int, lease: String
) -> String {
  var text = """
    cluster: failures
    model: {name: tiny, layers: 2, query_heads: 8, kv_heads: 2, head_dim: 64}
    coordinator:
      control: 127.0.0.1:\(coordinatorPort)
      state_dir: \(directory.path)/state
      lease: \(lease)
      heartbeat: 200ms
    worker:
      control: 127.0.0.1:0
      key_codec: pq
      key_bits: 8
      group_size: 4
      window: 16
      sinks: 4
      tau: 1
      output_mode: exact
    budgets: {policy: hcattention, memory_fraction: 1, min_tokens: 16}
    replication: \(replication)
    memory_nodes:

    """
  for i in 0..<nodes {
    text += "  - {id: mem-\(i), data: 127.0.0.1:0, control: 127.0.0.1:0, capacity: 256MiB}\n"
  }
  return text
}

/// The shards memory node `node` (its control address) holds.
func shardCount(_ node: HostPort) async throws -> Int {
  try await ControlPlaneClient.with(address: node, security: .none) { grpc in
    try await Heterokv_V1_MemoryNodeControl.Client(wrapping: grpc).listShards(.init()).shards
      .count
  }
}

/// The coordinator's status over gRPC.
func clusterStatus(_ coordinator: HostPort) async throws -> Heterokv_V1_ClusterStatus {
  try await CoordinatorClient.with(address: coordinator) { try await $0.status() }
}

@Suite("Failures of real processes", .serialized)
struct FailureProcessTests {
  @Test(
    "replication 2 over 3 memory-node processes: SIGKILL one mid-decode, repair completes, SIGKILL a second; every output equals the run without failures"
  )
  func repairAfterSIGKILL() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-repair-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let started = try startCoordinator(in: dir) {
      failureClusterFile(
        directory: dir, coordinatorPort: $0, nodes: 3, replication: 2, lease: "1s")
    }
    let coordinator = started.process
    let nodes = try (0..<3).map { i in
      let node = try HKVDaemonProcess([
        "memnode", "--config", started.clusterFile, "--id", "mem-\(i)",
      ])
      try node.waitUntilReady()
      return node
    }
    defer {
      for node in nodes { node.kill() }
      coordinator.kill()
    }
    // Every node registered before the sequences are placed.
    let deadline = ContinuousClock.now + .seconds(20)
    while try await clusterStatus(started.address).nodesUp < 3 {
      guard ContinuousClock.now < deadline else { throw HeteroKVError(.unavailable, "no nodes") }
      try await Task.sleep(for: .milliseconds(50))
    }
    let cluster = try ClusterConfiguration.load(path: started.clusterFile)
    var options = try WorkerOptions(cluster: cluster, id: "worker-test")
    options.chunkTokens = 1024
    options.replicaCheckInterval = .milliseconds(100)
    let worker = try Worker(options: options, control: CoordinatorControl(address: started.address))
    defer { Task { await worker.shutdown() } }
    let replay = try tinyWorkload(steps: 24)

    let calm = SequenceRef(sequence: 1)
    _ = try await worker.createSequence(calm, maxTokens: 4096)
    try await replay.prefill(worker, calm)
    try await worker.flush(calm)
    let expected = try await replay.decode(worker, calm, measure: false, keepOutputs: true)

    let ref = SequenceRef(sequence: 2)
    _ = try await worker.createSequence(ref, maxTokens: 4096)
    try await replay.prefill(worker, ref)
    try await worker.flush(ref)
    var repairTime: Duration?
    let report = try await replay.decode(
      worker, ref, measure: false, keepOutputs: true,
      beforeStep: { t in
        if t == 6 {
          nodes[0].kill()
        } else if t == 12 {
          // Repaired: the worker reports both sequences copied to the placement without mem-0.
          let waited = ContinuousClock.now
          let limit = waited + .seconds(30)
          while true {
            let status = try await clusterStatus(started.address)
            let repaired =
              status.sequences.count == 2
              && status.sequences.allSatisfy {
                $0.placementVersion > 1 && $0.repairedVersion == $0.placementVersion
                  && $0.underReplicatedShards == 0
              }
            if repaired {
              #expect(status.sequences.allSatisfy { $0.shardsCopied > 0 })
              break
            }
            guard ContinuousClock.now < limit else {
              Issue.record("not repaired within 30 s: \(status.sequences)")
              break
            }
            try await Task.sleep(for: .milliseconds(50))
          }
          repairTime = ContinuousClock.now - waited
          nodes[1].kill()
        }
      })
    #expect(repairTime != nil)
    #expect(report.stepOutputs.count == 24)
    var worst = 0.0
    for (a, b) in zip(report.stepOutputs, expected.stepOutputs) {
      worst = max(worst, maxRelativeDifference(a, b, headDim: tinyModel.headDim))
    }
    #expect(worst <= 1e-6, "largest relative difference from the run without failures: \(worst)")
    _ = try await worker.release(calm)
    _ = try await worker.release(ref)
    #expect(try await clusterStatus(started.address).reservedBytes == 0)
  }

  @Test(
    "a worker SIGKILLed with three open sequences: within two leases the coordinator reserves nothing and no node holds a shard"
  )
  func orphanedSequencesAreReclaimed() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-orphan-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let lease = 2.0
    let started = try startCoordinator(in: dir) {
      failureClusterFile(
        directory: dir, coordinatorPort: $0, nodes: 2, replication: 2, lease: "2s")
    }
    let coordinator = started.process
    let nodes = try (0..<2).map { i in
      let node = try HKVDaemonProcess([
        "memnode", "--config", started.clusterFile, "--id", "mem-\(i)",
      ])
      try node.waitUntilReady()
      return node
    }
    let worker = try HKVDaemonProcess(["worker", "--config", started.clusterFile])
    try worker.waitUntilReady()
    defer {
      worker.kill()
      for node in nodes { node.kill() }
      coordinator.kill()
    }
    let engine = try #require(worker.address("engine"))
    let controls = try nodes.map { try #require($0.address("control")) }
    let deadline = ContinuousClock.now + .seconds(20)
    while try await clusterStatus(started.address).nodesUp < 2 {
      guard ContinuousClock.now < deadline else { throw HeteroKVError(.unavailable, "no nodes") }
      try await Task.sleep(for: .milliseconds(50))
    }
    let replay = try tinyWorkload(tokens: 512, steps: 1)
    try await EngineClient.with(address: engine, geometry: tinyModel) { client in
      for s in 1...3 {
        let ref = SequenceRef(sequence: UInt64(s))
        _ = try await client.createSequence(ref, maxTokens: 2048)
        try await replay.prefill(client, ref)
      }
    }
    // The rows reached both nodes (the writer ships in the background).
    let landed = ContinuousClock.now + .seconds(20)
    while true {
      var counts: [Int] = []
      for control in controls { counts.append(try await shardCount(control)) }
      if counts.allSatisfy({ $0 == 3 * 2 * 2 }) { break }
      guard ContinuousClock.now < landed else {
        Issue.record("rows did not reach the nodes: \(counts)")
        return
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    let before = try await clusterStatus(started.address)
    #expect(before.sequences.count == 3 && before.reservedBytes > 0 && before.workersUp == 1)

    worker.kill()
    let killed = ContinuousClock.now
    var reclaimed = false
    while ContinuousClock.now - killed < .seconds(2 * lease) {
      let status = try await clusterStatus(started.address)
      var shards = 0
      for control in controls { shards += try await shardCount(control) }
      if status.reservedBytes == 0 && status.sequences.isEmpty && shards == 0
        && status.sequencesAwaitingDrop == 0
      {
        reclaimed = true
        break
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(reclaimed, "not reclaimed within two leases (\(lease * 2) s)")
    #expect(try await clusterStatus(started.address).workersUp == 0)
  }
}
