import Foundation
import HeteroKVCoordinatorClient
import HeteroKVWire
import HeteroKVTestSupport
import Testing

/// `hkv coordinator --config config` as a child process, ready, with its address and revision.
func startCoordinator(config: String) throws -> (HKVDaemonProcess, HostPort, Int) {
  let daemon = try HKVDaemonProcess(["coordinator", "--config", config, "--log-level", "info"])
  try daemon.waitUntilReady()
  let address = try #require(daemon.address("coordinator"))
  return (daemon, address, Int(daemon.fields["revision"] ?? "") ?? -1)
}

/// What the coordinator says about the cluster, in a comparable form.
struct ClusterView: Equatable {
  var nodes: [String]
  var placement: Heterokv_V1_SequencePlacement
  var budgets: Heterokv_V1_GetBudgetsResponse

  static func read(_ client: CoordinatorClient) async throws -> ClusterView {
    ClusterView(
      nodes: try await client.nodes().members.map {
        "\($0.memberID) \($0.status) \($0.incarnation) \($0.capacityBytes)"
      },
      placement: try await client.placement(namespace: 3, sequence: 12),
      budgets: try await client.budgets(namespace: 3, sequence: 12, layer: nil))
  }
}

@Suite("hkv coordinator and the admin CLI as separate processes")
struct CoordinatorProcessTests {
  @Test(
    "a coordinator killed and restarted returns the same nodes, placements and budgets; the CLI's JSON matches"
  )
  func restartAndCLI() async throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = dir + "/cluster.yaml"
    try """
    cluster: proc
    model:
      layers: 2
      query_heads: 8
      kv_heads: 4
      head_dim: 64
    coordinator:
      control: 127.0.0.1:0
      state_dir: \(dir)/state
      lease: 60s
      snapshot_every: 16
    memory_nodes:
      - {id: m0, data: 127.0.0.1:1, control: 127.0.0.1:2, capacity: 1GiB}
      - {id: m1, data: 127.0.0.1:3, control: 127.0.0.1:4, capacity: 1GiB}
      - {id: m2, data: 127.0.0.1:5, control: 127.0.0.1:6, capacity: 2GiB}
    budgets: {policy: heterocache, memory_fraction: 0.3, min_tokens: 32}
    replication: 2
    """.write(toFile: config, atomically: true, encoding: .utf8)

    let (first, firstAddress, firstRevision) = try startCoordinator(config: config)
    #expect(firstRevision == 0)
    // Generous deadlines: this runs beside the rest of the suite on two cores.
    let before = try await CoordinatorClient.with(address: firstAddress, timeout: .seconds(30)) {
      client in
      for (i, capacity) in [1 << 30, 1 << 30, 2 << 30].enumerated() {
        _ = try await client.register(
          .with {
            $0.memberID = "m\(i)"
            $0.role = .memoryNode
            $0.dataAddress = "127.0.0.1:\(7100 + i)"
            $0.capacityBytes = UInt64(capacity)
            $0.transport = "tcp"
          })
      }
      // Enough changes to pass a snapshot (every 16) and leave a log tail after it.
      for s in 0..<10 {
        _ = try await client.openSequence(
          .with {
            $0.ref = .with {
              $0.namespace = 3
              $0.sequence = UInt64(s + 5)
            }
            $0.workerID = "w0"
            $0.maxTokens = 10_000
          })
        _ = try await client.reportProfiles(
          .with {
            $0.ref = .with {
              $0.namespace = 3
              $0.sequence = UInt64(s + 5)
            }
            $0.prefillTokens = UInt64(1000 + 100 * s)
            $0.heads = testProfiles().map(report)
          })
      }
      return try await ClusterView.read(client)
    }
    #expect(before.placement.nodes.map(\.nodeID) == ["m0", "m1", "m2"])
    first.kill()

    let (second, address, revision) = try startCoordinator(config: config)
    defer { second.kill() }
    #expect(revision == 3 + 20)
    let after = try await CoordinatorClient.with(address: address, timeout: .seconds(30)) {
      client in
      try await ClusterView.read(client)
    }
    #expect(after == before)

    // The CLI's JSON parses and says what the coordinator says.
    let budgets = try runHKV([
      "budgets", "--coordinator", "\(address)", "--namespace", "3", "--sequence", "12",
      "--json", "--timeout", "30",
    ])
    #expect(budgets.status == 0, "\(budgets.err)")
    let json = try #require(
      try JSONSerialization.jsonObject(with: budgets.out) as? [String: Any])
    let sequences = try #require(json["sequences"] as? [[String: Any]])
    let heads = try #require(sequences.first?["heads"] as? [[String: Any]])
    #expect(heads.count == before.budgets.sequences[0].heads.count)
    for (row, head) in zip(heads, before.budgets.sequences[0].heads) {
      #expect(row["layer"] as? Int == Int(head.layer))
      #expect(row["kv_head"] as? Int == Int(head.kvHead))
      #expect(row["role"] as? String == head.role)
      #expect(row["cap"] as? Int == Int(head.cap))
    }
    #expect(
      sequences.first?["total_tokens"] as? Int == Int(before.budgets.sequences[0].totalTokens))

    let status = try runHKV([
      "status", "--coordinator", "\(address)", "--json", "--timeout", "30",
    ])
    #expect(status.status == 0, "\(status.err)")
    let summary = try #require(try JSONSerialization.jsonObject(with: status.out) as? [String: Any])
    #expect(summary["nodes_up"] as? Int == 3)
    #expect(summary["capacity_bytes"] as? Int == 4 << 30)
    #expect((summary["sequences"] as? [Any])?.count == 10)

    let nodes = try runHKV(["nodes", "--coordinator", "\(address)", "--timeout", "30"])
    let rows = String(decoding: nodes.out, as: UTF8.self).split(separator: "\n").map {
      $0.split(separator: " ").map(String.init)
    }
    #expect(rows.first?.prefix(3) == ["ID", "ROLE", "STATUS"])
    #expect(
      rows.dropFirst().map { Array($0.prefix(3)) }
        == ["m0", "m1", "m2"].map { [$0, "memory_node", "up"] })

    // Clear errors: a sequence that does not exist, a coordinator that is not there.
    let missing = try runHKV([
      "heads", "--coordinator", "\(address)", "--sequence", "999", "--timeout", "30",
    ])
    #expect(missing.status != 0)
    #expect(missing.err.contains("no open sequence 0/999"))
    let nowhere = try runHKV(["status", "--coordinator", "127.0.0.1:1", "--timeout", "2"])
    #expect(nowhere.status != 0)
    #expect(nowhere.err.contains("cannot reach the coordinator at 127.0.0.1:1"))
  }

  @Test("a wrong cluster file stops the coordinator at start with every problem and its line")
  func badConfig() throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = dir + "/bad.yaml"
    try """
    cluster: bad
    model: llama-9
    coordinator:
      control: 127.0.0.1:notaport
      state_dir: \(dir)/state
      lease: 2s
      heartbeat: 5s
    memory_nodes:
      - {id: m0, data: 127.0.0.1:1, control: 127.0.0.1:2, capacity: 1GiB}
    budgets:
      policy: greedy
      memory_fraction: 2
    replication: 3
    secuirty: {}
    """.write(toFile: config, atomically: true, encoding: .utf8)
    let run = try runHKV(["coordinator", "--config", config])
    #expect(run.status != 0)
    for expected in [
      "bad.yaml:2: model: unknown preset \"llama-9\"",
      "bad.yaml:4: coordinator.control: expected host:port",
      "bad.yaml:7: coordinator.heartbeat: must be shorter than the lease",
      "bad.yaml:11: budgets.policy: expected one of heterocache | hcattention | uniform",
      "bad.yaml:12: budgets.memory_fraction: must be in",
      "bad.yaml:13: replication: 3 copies need at least 3 memory nodes",
      "bad.yaml:14: secuirty: unknown key (did you mean \"security\"?)",
    ] {
      #expect(run.err.contains(expected), "missing \(expected) in:\n\(run.err)")
    }
    #expect(run.err.contains("(7 problems)"), "\(run.err)")
  }
}
