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

/// Worker options for the cluster `started` once its `nodes` memory nodes are up: 1K-token
/// shards and a replica check every 100 ms.
func failureWorkerOptions(_ started: StartedCoordinator, nodes: Int) async throws -> WorkerOptions {
  let deadline = ContinuousClock.now + .seconds(20)
  while try await clusterStatus(started.address).nodesUp < nodes {
    guard ContinuousClock.now < deadline else { throw HeteroKVError(.unavailable, "no nodes") }
    try await Task.sleep(for: .milliseconds(50))
  }
  let cluster = try ClusterConfiguration.load(path: started.clusterFile)
  var options = try WorkerOptions(cluster: cluster, id: "worker-test")
  options.chunkTokens = 1024
  options.replicaCheckInterval = .milliseconds(100)
  return options
}

/// Opens sequence `namespace/sequence` for worker `test-client` at whichever coordinator leads
/// among `addresses` (waiting `patience` for one).
func openTestSequence(
  among addresses: [HostPort], namespace: UInt32 = 0, sequence: UInt64, maxTokens: Int = 1024,
  timeout: Duration = .seconds(5), patience: Duration = .zero
) async throws {
  _ = try await CoordinatorClient.withLeader(
    among: addresses, timeout: timeout, patience: patience
  ) { client in
    try await client.openSequence(
      .with {
        $0.ref = .with {
          $0.namespace = namespace
          $0.sequence = sequence
        }
        $0.workerID = "test-client"
        $0.maxTokens = UInt64(maxTokens)
      })
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
    let options = try await failureWorkerOptions(started, nodes: 3)
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

/// A network namespace joined to this one by a veth pair on a /30 of its own: the host end is
/// `hostAddress`, the namespace end `innerAddress`. ``cut()`` takes the inner end down, so
/// packets to it vanish (open connections hang, new ones find no route), as when a node's
/// link or switch port dies; ``remove()`` deletes both.
struct VethNamespace {
  let name: String
  let hostLink: String
  let innerLink: String
  let hostAddress: String
  let innerAddress: String

  /// Root with `ip` from iproute2 and the right to create a namespace (tried: a container
  /// without CAP_SYS_ADMIN is root but cannot).
  static let available: Bool = {
    guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else {
      return false
    }
    let probe = "hkv-probe-\(getpid())"
    guard (try? ip(["netns", "add", probe])) != nil else { return false }
    try? ip(["netns", "del", probe])
    return true
  }()

  init() throws {
    let tag = String(UInt32.random(in: 0..<1_000_000))
    let subnet = Int.random(in: 0..<64) * 4
    let third = Int.random(in: 0..<256)
    name = "hkv-test-\(tag)"
    hostLink = "hkvh\(tag)"
    innerLink = "hkvn\(tag)"
    hostAddress = "10.231.\(third).\(subnet + 1)"
    innerAddress = "10.231.\(third).\(subnet + 2)"
    try Self.ip(["netns", "add", name])
    do {
      try Self.ip(["link", "add", hostLink, "type", "veth", "peer", "name", innerLink])
      try Self.ip(["link", "set", innerLink, "netns", name])
      try Self.ip(["addr", "add", "\(hostAddress)/30", "dev", hostLink])
      try Self.ip(["link", "set", hostLink, "up"])
      try Self.ip([
        "netns", "exec", name, "ip", "addr", "add", "\(innerAddress)/30", "dev", innerLink,
      ])
      try Self.ip(["netns", "exec", name, "ip", "link", "set", innerLink, "up"])
      try Self.ip(["netns", "exec", name, "ip", "link", "set", "lo", "up"])
    } catch {
      remove()
      throw error
    }
  }

  /// Takes the namespace's end of the link down.
  func cut() throws {
    try Self.ip(["netns", "exec", name, "ip", "link", "set", innerLink, "down"])
  }

  /// Deletes the namespace (and with it the pair).
  func remove() {
    try? Self.ip(["netns", "del", name])
    try? Self.ip(["link", "del", hostLink])
  }

  static func ip(_ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    let err = Pipe()
    process.standardError = err
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
      let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
      throw HeteroKVError(
        .unavailable, "ip \(arguments.joined(separator: " ")): \(message)")
    }
  }
}

@Suite("A memory node cut off the network", .serialized)
struct NetworkCutTests {
  @Test(
    "a node cut off mid-decode (veth pair into a network namespace): outputs unchanged; once it is marked down, no step waits on it and steps stay within 2x the median before the cut",
    .enabled(
      if: VethNamespace.available,
      "needs root, iproute2 and the right to create network namespaces (CAP_SYS_ADMIN)")
  )
  func nodeCutOff() async throws {
    let namespace = try VethNamespace()
    defer { namespace.remove() }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-cut-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    // The coordinator listens on the host end so the node inside the namespace reaches it.
    let started = try startCoordinator(in: dir) { port in
      failureClusterFile(
        directory: dir, coordinatorPort: port, nodes: 3, replication: 2, lease: "1s"
      ).replacingOccurrences(
        of: "control: 127.0.0.1:\(port)", with: "control: \(namespace.hostAddress):\(port)"
      ).replacingOccurrences(
        of: "{id: mem-2, data: 127.0.0.1:0, control: 127.0.0.1:0",
        with: "{id: mem-2, data: \(namespace.innerAddress):0, control: \(namespace.innerAddress):0")
    }
    let coordinator = started.process
    var nodes: [HKVDaemonProcess] = []
    for i in 0..<3 {
      let node = try HKVDaemonProcess(
        ["memnode", "--config", started.clusterFile, "--id", "mem-\(i)"],
        networkNamespace: i == 2 ? namespace.name : nil)
      try node.waitUntilReady()
      nodes.append(node)
    }
    defer {
      for node in nodes { node.kill() }
      coordinator.kill()
    }
    var options = try await failureWorkerOptions(started, nodes: 3)
    options.requestTimeout = .milliseconds(500)
    let worker = try Worker(options: options, control: CoordinatorControl(address: started.address))
    defer { Task { await worker.shutdown() } }
    let replay = try tinyWorkload(tokens: 4096, steps: 40)

    let calm = SequenceRef(sequence: 1)
    _ = try await worker.createSequence(calm, maxTokens: 8192)
    try await replay.prefill(worker, calm)
    try await worker.flush(calm)
    let expected = try await replay.decode(worker, calm, measure: false, keepOutputs: true)

    let ref = SequenceRef(sequence: 2)
    _ = try await worker.createSequence(ref, maxTokens: 8192)
    try await replay.prefill(worker, ref)
    try await worker.flush(ref)
    let cutAt = 10
    var stepStarted = ContinuousClock.now
    var durations: [Duration] = []
    var markedDownAt: Int?
    let report = try await replay.decode(
      worker, ref, measure: false, keepOutputs: true,
      beforeStep: { t in
        let now = ContinuousClock.now
        if t > 0 { durations.append(now - stepStarted) }
        if t == cutAt { try namespace.cut() }
        if markedDownAt == nil && t > cutAt && worker.nodesMarkedDown.contains("mem-2") {
          markedDownAt = t
        }
        stepStarted = ContinuousClock.now
      })
    durations.append(ContinuousClock.now - stepStarted)
    var worst = 0.0
    for (a, b) in zip(report.stepOutputs, expected.stepOutputs) {
      worst = max(worst, maxRelativeDifference(a, b, headDim: tinyModel.headDim))
    }
    #expect(worst <= 1e-6, "largest relative difference from the run without failures: \(worst)")
    let marked = try #require(markedDownAt, "mem-2 was never marked down")
    #expect(marked <= cutAt + 2, "marked down before step \(marked)")
    func median(_ xs: [Duration]) -> Duration { xs.sorted()[xs.count / 2] }
    let before = median(Array(durations[2..<cutAt]))
    let after = Array(durations[marked...])
    #expect(
      after.allSatisfy { $0 < options.requestTimeout },
      "a step after the node was marked down waited on it: \(after)")
    #expect(
      median(after) <= before * 2,
      "median step \(median(after)) after marking, \(before) before the cut")
  }
}

@Suite("A replicated coordinator on etcd", .serialized)
struct CoordinatorFailoverTests {
  @Test(
    "on a three-member etcd: losing one member changes nothing, losing two refuses writes clearly while reads answer the last state, and after etcd recovers the state is whole and writes go on"
  )
  func etcdMemberLoss() async throws {
    let etcd = try EtcdCluster(members: 3)
    defer { etcd.stop() }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-quorum-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let port = try freeTestPort()
    let endpoints = etcd.members.map { "\"127.0.0.1:\($0.client)\"" }.joined(separator: ", ")
    let text = """
      cluster: quorum
      model: {name: tiny, layers: 2, query_heads: 8, kv_heads: 2, head_dim: 64}
      coordinator:
        control: 127.0.0.1:\(port)
        store: etcd
        etcd: {endpoints: [\(endpoints)], prefix: /heterokv/quorum}
        lease: 2s
        heartbeat: 500ms
      memory_nodes:
        - {id: mem-0, data: 127.0.0.1:0, control: 127.0.0.1:0, capacity: 64MiB}

      """
    let file = dir.appendingPathComponent("cluster.yaml").path
    try text.write(toFile: file, atomically: true, encoding: .utf8)
    let address = HostPort(host: "127.0.0.1", port: port)
    let coordinator = try HKVDaemonProcess(["coordinator", "--config", file])
    try coordinator.waitUntilReady()
    defer { coordinator.kill() }
    func open(_ sequence: UInt64) async throws {
      try await openTestSequence(
        among: [address], sequence: sequence, timeout: .seconds(10), patience: .seconds(15))
    }
    let node = try HKVDaemonProcess(["memnode", "--config", file, "--id", "mem-0"])
    try node.waitUntilReady()
    defer { node.kill() }
    let up = ContinuousClock.now + .seconds(10)
    while (try? await CoordinatorClient.with(address: address) { try await $0.status() })?.nodesUp
      != 1
    {
      guard ContinuousClock.now < up else {
        Issue.record("the memory node did not register")
        return
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    try await open(1)
    etcd.kill(0)
    try await open(2)
    etcd.kill(1)
    do {
      try await openTestSequence(among: [address], sequence: 3, timeout: .seconds(10))
      Issue.record("a write without an etcd quorum succeeded")
    } catch {
      // Refused: by the store (no quorum), by a replica that stepped down, or by the
      // coordinator's own checks on the state it still holds; never applied (below).
    }
    // Reads answer the last state.
    let last = try await CoordinatorClient.with(address: address, timeout: .seconds(10)) {
      try await $0.status()
    }
    #expect(last.sequences.map(\.ref.sequence) == [1, 2])
    try etcd.restart(0)
    try etcd.restart(1)
    // The coordinator leads again on the whole state, and writes go on (once the memory node's
    // next heartbeat or registration is in).
    let recovered = ContinuousClock.now + .seconds(30)
    while true {
      do {
        try await open(3)
        break
      } catch {
        guard ContinuousClock.now < recovered else { throw error }
        try await Task.sleep(for: .milliseconds(200))
      }
    }
    let after = try await CoordinatorClient.withLeader(among: [address], patience: .seconds(10)) {
      try await $0.status()
    }.result
    #expect(after.sequences.map(\.ref.sequence) == [1, 2, 3])
    #expect(after.nodesUp == 1)
  }

  @Test(
    "a leader frozen (SIGSTOP: cut off from etcd and its members) loses its lease: the standby leads, and the old leader, resumed, stands by and redirects to it"
  )
  func frozenLeaderStepsDown() async throws {
    let etcd = try EtcdCluster(members: 1)
    defer { etcd.stop() }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-freeze-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let ports = [try freeTestPort(), try freeTestPort()]
    let text = """
      cluster: freeze
      model: {name: tiny, layers: 2, query_heads: 8, kv_heads: 2, head_dim: 64}
      coordinator:
        control: 127.0.0.1:\(ports[0])
        store: etcd
        etcd: {endpoints: ["127.0.0.1:\(etcd.members[0].client)"], prefix: /heterokv/freeze}
        replicas:
          - {id: coord-1, control: 127.0.0.1:\(ports[0])}
          - {id: coord-2, control: 127.0.0.1:\(ports[1])}
        lease: 2s
        heartbeat: 500ms
      memory_nodes:
        - {id: mem-0, data: 127.0.0.1:0, control: 127.0.0.1:0, capacity: 64MiB}

      """
    let file = dir.appendingPathComponent("cluster.yaml").path
    try text.write(toFile: file, atomically: true, encoding: .utf8)
    let addresses = ports.map { HostPort(host: "127.0.0.1", port: $0) }
    let first = try HKVDaemonProcess(["coordinator", "--config", file, "--id", "coord-1"])
    try first.waitUntilReady()
    // coord-1 leads before coord-2 starts.
    let leads = ContinuousClock.now + .seconds(10)
    while (try? await CoordinatorClient.with(address: addresses[0]) { try await $0.status() })?
      .leader != "coord-1"
    {
      guard ContinuousClock.now < leads else {
        Issue.record("coord-1 never led")
        return
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    let second = try HKVDaemonProcess(["coordinator", "--config", file, "--id", "coord-2"])
    try second.waitUntilReady()
    defer {
      kill(first.processID, SIGCONT)
      first.kill()
      second.kill()
    }
    kill(first.processID, SIGSTOP)
    let frozen = ContinuousClock.now
    var took: Duration?
    // (etcd grants leases of at least about 2 s with its default election timeout.)
    while ContinuousClock.now - frozen < .seconds(8) {
      if let s = try? await CoordinatorClient.with(
        address: addresses[1], { try await $0.status() }),
        s.leader == "coord-2"
      {
        took = ContinuousClock.now - frozen
        break
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    let leadIn = try #require(took, "coord-2 did not lead within 8 s")
    #expect(leadIn <= .seconds(4), "coord-2 led after \(leadIn) (two leases are 4 s)")
    kill(first.processID, SIGCONT)
    // Resumed, coord-1 finds its lease gone and stands by: it redirects to coord-2.
    let resumed = ContinuousClock.now
    var redirect: String?
    while ContinuousClock.now - resumed < .seconds(5) {
      do {
        _ = try await CoordinatorClient.with(address: addresses[0]) { try await $0.status() }
      } catch let error as HeteroKVError {
        redirect = CoordinatorRedirect.leader(in: error.message)
        if redirect != nil { break }
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    #expect(redirect == addresses[1].description)
    let status = try await CoordinatorClient.withLeader(among: addresses) { try await $0.status() }
    #expect(status.result.leader == "coord-2")
    #expect(status.address == addresses[1])
  }

  @Test(
    "two coordinators on one etcd: the leader SIGKILLed mid-decode, the standby leads within two leases, hkv demo exits 0, budgets and placements are unchanged, and sequences open and close afterwards"
  )
  func leaderKilledMidDecode() async throws {
    let etcd = try EtcdCluster(members: 1)
    defer { etcd.stop() }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-ha-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let ports = [try freeTestPort(), try freeTestPort()]
    let lease = 2.0
    var text = """
      cluster: ha
      model: {name: llama-1layer, layers: 1, query_heads: 32, kv_heads: 8, head_dim: 128}
      coordinator:
        control: 127.0.0.1:\(ports[0])
        store: etcd
        etcd: {endpoints: ["127.0.0.1:\(etcd.members[0].client)"], prefix: /heterokv/ha}
        replicas:
          - {id: coord-1, control: 127.0.0.1:\(ports[0])}
          - {id: coord-2, control: 127.0.0.1:\(ports[1])}
        lease: 2s
        heartbeat: 400ms
      worker:
        control: 127.0.0.1:\(try freeTestPort())
        key_codec: scalar
        key_bits: 4
        tau: 0.99
        output_mode: exact
      budgets: {policy: hcattention, memory_fraction: 0.125}
      replication: 2
      memory_nodes:

      """
    for i in 0..<2 {
      text += "  - {id: mem-\(i), data: 127.0.0.1:0, control: 127.0.0.1:0, capacity: 256MiB}\n"
    }
    let file = dir.appendingPathComponent("cluster.yaml").path
    try text.write(toFile: file, atomically: true, encoding: .utf8)
    let addresses = ports.map { HostPort(host: "127.0.0.1", port: $0) }
    func status() async throws -> Heterokv_V1_ClusterStatus {
      try await CoordinatorClient.withLeader(among: addresses) { try await $0.status() }.result
    }

    var coordinators: [HKVDaemonProcess] = []
    for id in ["coord-1", "coord-2"] {
      let process = try HKVDaemonProcess(["coordinator", "--config", file, "--id", id])
      try process.waitUntilReady()
      coordinators.append(process)
    }
    let nodes = try (0..<2).map { i in
      let node = try HKVDaemonProcess(["memnode", "--config", file, "--id", "mem-\(i)"])
      try node.waitUntilReady()
      return node
    }
    let worker = try HKVDaemonProcess(["worker", "--config", file])
    try worker.waitUntilReady()
    defer {
      worker.kill()
      for node in nodes { node.kill() }
      for coordinator in coordinators { coordinator.kill() }
    }
    let ready = ContinuousClock.now + .seconds(20)
    while true {
      if let s = try? await status(), s.nodesUp == 2, s.workersUp == 1 { break }
      guard ContinuousClock.now < ready else {
        Issue.record("the cluster did not come up: \(String(describing: try? await status()))")
        return
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    let leaderID = try await status().leader
    #expect(try await status().store == "etcd")
    #expect(["coord-1", "coord-2"].contains(leaderID))
    let leaderIndex = leaderID == "coord-1" ? 0 : 1

    // A sequence the test holds across the failover, with budgets.
    let kept = Heterokv_V1_SequenceRef.with {
      $0.namespace = 9
      $0.sequence = 1
    }
    try await openTestSequence(among: addresses, namespace: 9, sequence: 1, maxTokens: 4096)
    _ = try await CoordinatorClient.withLeader(among: addresses) { client in
      try await client.reportProfiles(
        .with {
          $0.ref = kept
          $0.prefillTokens = 2048
          $0.heads = (0..<8).map { h in
            HeadProfile(
              layer: 0, kvHead: h, stability: 0.2 + 0.1 * Double(h),
              similarity: (0..<8).map { $0 == h ? 1 : 0.1 }, role: .volatile
            ).report
          }
        })
    }
    func keptFigures() async throws -> (
      Heterokv_V1_SequencePlacement, Heterokv_V1_GetBudgetsResponse
    ) {
      try await CoordinatorClient.withLeader(among: addresses) { client in
        (
          try await client.placement(namespace: 9, sequence: 1),
          try await client.budgets(namespace: 9, sequence: 1, layer: nil)
        )
      }.result
    }
    let before = try await keptFigures()

    let demo = try DemoRun(config: file, tokens: 6000, steps: 80)
    demo.waitForDecode()
    coordinators[leaderIndex].kill()
    let killed = ContinuousClock.now
    var took: Duration?
    while ContinuousClock.now - killed < .seconds(3 * lease) {
      if let s = try? await status(), !s.leader.isEmpty, s.leader != leaderID {
        took = ContinuousClock.now - killed
        break
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    let (demoStatus, decoded) = demo.finish()
    let leadIn = try #require(took, "no standby led within \(3 * lease) s")
    #expect(leadIn <= .seconds(2 * lease), "the standby led after \(leadIn)")
    #expect(demoStatus == 0, "stderr: \(demo.progress)")
    let report = try #require(decoded, "no JSON report: \(demo.progress)")
    #expect(report.decodeSteps == 80)

    let after = try await keptFigures()
    #expect(after.0 == before.0, "placement changed across the failover")
    #expect(after.1 == before.1, "budgets changed across the failover")
    // New sequences open and close on the new leader; members stayed up.
    try await openTestSequence(among: addresses, namespace: 9, sequence: 2)
    _ = try await CoordinatorClient.withLeader(among: addresses) { client in
      try await client.closeSequence(namespace: 9, sequence: 2)
    }
    let final = try await status()
    #expect(final.nodesUp == 2 && final.workersUp == 1, "\(final)")
    #expect(final.sequences.map(\.ref.sequence) == [1], "\(final.sequences)")
  }
}
