import Foundation
import HeteroKVConfig
import HeteroKVWire
import Testing

@Suite("Cluster configuration")
struct ClusterConfigurationTests {
  @Test("sizes parse in binary and decimal units")
  func sizes() {
    #expect(ByteSize.parse("4GiB") == 4 << 30)
    #expect(ByteSize.parse("64 KiB") == 65536)
    #expect(ByteSize.parse("1.5MiB") == 1_572_864)
    #expect(ByteSize.parse("10GB") == 10_000_000_000)
    #expect(ByteSize.parse("123") == 123)
    #expect(ByteSize.parse("12B") == 12)
    #expect(ByteSize.parse("-1") == nil)
    #expect(ByteSize.parse("lots") == nil)
    #expect(ByteSize.parse("0.3B") == nil)
    #expect(ByteSize.format(3 << 30) == "3.0 GiB")
    #expect(ByteSize.format(500) == "500 B")
  }

  @Test("a valid file gives typed settings with defaults")
  func valid() throws {
    let config = try ClusterConfiguration.parse(
      yaml: """
        cluster: lab
        memory_nodes:
          - id: m0
            data: 10.0.0.1:7100
            control: 10.0.0.1:7101
            metrics: 10.0.0.1:9100
            capacity: 96GiB
            transport: rdma
          - id: m1
            data: "[fd00::2]:7100"
            control: "[fd00::2]:7101"
            capacity: 64GiB
            page_size: 256KiB
        """)
    #expect(config.name == "lab")
    #expect(config.memoryNodes.count == 2)
    let m0 = try config.memoryNode(id: "m0")
    #expect(m0.transport == .rdma && m0.capacityBytes == 96 << 30 && m0.pageBytes == 64 << 10)
    #expect(m0.metrics == HostPort(host: "10.0.0.1", port: 9100))
    let m1 = try config.memoryNode(id: "m1")
    #expect(
      m1.data == HostPort(host: "fd00::2", port: 7100) && m1.transport == .tcp && m1.metrics == nil)
    #expect(m1.pageBytes == 256 << 10)
    #expect(throws: ConfigurationError.self) { try config.memoryNode(id: "m9") }
  }

  @Test("every problem is listed with its key path and line")
  func problems() {
    let yaml = """
      cluster: lab
      extra: 1
      memory_nodes:
        - id: m0
          data: 10.0.0.1:7100
          control: 10.0.0.1:7100
          capacity: 1KiB
          page_size: 100
          transport: udp
        - id: m0
          data: 10.0.0.2:7100
          capacity: 1GiB
        - just a string
      """
    do {
      _ = try ClusterConfiguration.parse(yaml: yaml, file: "c.yaml")
      Issue.record("expected problems")
    } catch {
      let text = error.description
      let expected = [
        "c.yaml:2: extra: unknown key",
        "c.yaml:8: memory_nodes[0].page_size: must be a multiple of 64 bytes and at least 4KiB, got 100",
        "c.yaml:9: memory_nodes[0].transport: expected one of tcp | rdma, got \"udp\"",
        "c.yaml:10: memory_nodes[1].control: missing (required)",
        "c.yaml:13: memory_nodes[2]: expected a mapping",
      ]
      for line in expected {
        #expect(text.contains(line), "missing \(line) in\n\(text)")
      }
      #expect(error.problems.count == 5)
    }
  }

  @Test("duplicate ids and addresses, syntax errors and empty lists are reported")
  func structural() {
    let duplicate = """
      cluster: lab
      memory_nodes:
        - {id: a, data: "h:1", control: "h:2", capacity: 1MiB}
        - {id: a, data: "h:1", control: "h:3", capacity: 1MiB}
      """
    do {
      _ = try ClusterConfiguration.parse(yaml: duplicate)
      Issue.record("expected problems")
    } catch {
      #expect(error.description.contains(#"id "a" is used by entries 0 and 1"#))
      #expect(error.description.contains("h:1 is used twice (a.data and a.data)"))
    }
    do {
      _ = try ClusterConfiguration.parse(
        yaml: "cluster: [unclosed\nmemory_nodes: 3\n", file: "s.yaml")
      Issue.record("expected a syntax error")
    } catch {
      #expect(error.problems.count == 1)
      #expect(error.problems[0].line != nil)
      #expect(error.description.contains("YAML syntax"))
    }
    do {
      _ = try ClusterConfiguration.parse(yaml: "cluster: lab\nmemory_nodes: []\n")
      Issue.record("expected a problem")
    } catch {
      #expect(error.description.contains("at least one memory node"))
    }
  }
}

@Suite("Cluster file: coordinator, worker, budgets, security and overrides")
struct ClusterSectionsTests {
  static let full = """
    cluster: prod
    model: llama-3-8b
    coordinator:
      control: 10.0.0.1:7000
      metrics: 10.0.0.1:9000
      state_dir: /var/lib/hkv
      lease: 12s
      heartbeat: 4000ms
    memory_nodes:
      - {id: a, data: 10.0.0.2:7100, control: 10.0.0.2:7101, capacity: 64GiB}
      - {id: b, data: 10.0.0.3:7100, control: 10.0.0.3:7101, capacity: 64GiB}
    worker:
      key_codec: scalar
      key_bits: 4
      group_size: 32
      window: 128
      cap_selection: true
    budgets:
      policy: uniform
      memory_fraction: 0.25
      min_tokens: 128
      max_tokens: 4096
    replication: 2
    security:
      token_env: MY_TOKEN
      tls: {cert: /c.pem, key: /k.pem, ca: /ca.pem, require_client_cert: true}
    """

  @Test("a replicated coordinator needs no control address of its own; a lone one does")
  func replicasOnlyCoordinator() throws {
    let replicated = try ClusterConfiguration.parse(
      yaml: """
        cluster: x
        model: smollm2-135m
        coordinator:
          store: etcd
          etcd: {endpoints: [127.0.0.1:2379]}
          replicas:
            - {id: c1, control: 10.0.0.1:7000}
            - {id: c2, control: 10.0.0.2:7000}
        memory_nodes: [{id: a, data: h:1, control: h:2, capacity: 1MiB}]
        """)
    #expect(replicated.coordinator?.replicas.map(\.id) == ["c1", "c2"])
    #expect(
      replicated.coordinator?.controlAddresses == [
        HostPort(host: "10.0.0.1", port: 7000), HostPort(host: "10.0.0.2", port: 7000),
      ])
    #expect {
      try ClusterConfiguration.parse(
        yaml: """
          cluster: x
          model: smollm2-135m
          coordinator: {state_dir: /tmp/x}
          memory_nodes: [{id: a, data: h:1, control: h:2, capacity: 1MiB}]
          """)
    } throws: { error in
      "\(error)".contains("coordinator.control")
    }
  }

  @Test("every section parses into typed settings")
  func sections() throws {
    let c = try ClusterConfiguration.parse(yaml: Self.full)
    #expect(c.model?.name == "llama-3-8b")
    #expect(c.coordinator?.leaseSeconds == 12)
    #expect(c.coordinator?.heartbeatSeconds == 4)
    #expect(c.coordinator?.stateDirectory == "/var/lib/hkv")
    #expect(c.worker.keyCodec == .scalar)
    #expect(c.worker.keyBits == 4)
    #expect(c.worker.window == 128)
    #expect(c.worker.sinks == 4)
    #expect(c.worker.capSelection)
    #expect(c.budgets.policy == .uniform)
    #expect(c.budgets.maxTokens == 4096)
    #expect(c.replication == 2)
    #expect(c.security.tls?.requireClientCertificates == true)
    let custom = try ClusterConfiguration.parse(
      yaml: """
        cluster: x
        model: {layers: 4, query_heads: 8, kv_heads: 2, head_dim: 32}
        memory_nodes: [{id: a, data: h:1, control: h:2, capacity: 1MiB}]
        """)
    #expect(custom.model?.kvHeads == 2)
    #expect(custom.coordinator == nil)
    #expect(custom.worker.capSelection == false, "off by default")
  }

  @Test(
    "environment variables override the file and --set overrides both; a bad override names its source"
  )
  func overrides() throws {
    let env = ConfigurationOverride.fromEnvironment([
      "HKV_BUDGETS_MEMORY_FRACTION": "0.5", "HKV_COORDINATOR_STATE_DIR": "/srv/state",
      "HKV_REPLICATION": "1", "UNRELATED": "x",
    ])
    #expect(env.count == 3)
    let flags = try ConfigurationOverride.fromAssignments([
      "replication=2", "budgets.policy=heterocache",
    ])
    let c = try ClusterConfiguration.parse(yaml: Self.full, overrides: env + flags)
    #expect(c.budgets.memoryFraction == 0.5)
    #expect(c.coordinator?.stateDirectory == "/srv/state")
    #expect(c.replication == 2)
    #expect(c.budgets.policy == .heterocache)
    #expect(ConfigurationOverride.environmentName(for: "security.tls.ca") == "HKV_SECURITY_TLS_CA")

    do {
      _ = try ClusterConfiguration.parse(
        yaml: Self.full,
        overrides: ConfigurationOverride.fromEnvironment(["HKV_WORKER_GROUP_SIZE": "48"]))
      Issue.record("a group size that does not divide 128 was accepted")
    } catch {
      #expect(
        error.problems.map(\.description) == [
          "environment HKV_WORKER_GROUP_SIZE: worker.group_size: must divide the head dimension 128 of llama-3-8b, got 48"
        ])
    }
    #expect(throws: ConfigurationError.self) {
      try ConfigurationOverride.fromAssignments(["budgets.memory_fractoin=0.2"])
    }
    do {
      _ = try ConfigurationOverride.fromAssignments(["budgets.memory_fractoin=0.2", "nokey"])
    } catch {
      #expect(error.problems.count == 2)
      #expect(error.problems[0].message.contains("did you mean \"budgets.memory_fraction\""))
    }
  }

  @Test("every problem in the new sections is listed with its line")
  func problems() {
    do {
      _ = try ClusterConfiguration.parse(
        yaml: """
          cluster: p
          coordinator:
            control: 127.0.0.1:7000
          memory_nodes:
            - {id: a, data: h:1, control: h:2, capacity: 1MiB}
          worker:
            key_codec: pq
            key_bits: 3
          budgets:
            min_tokens: 500
            max_tokens: 100
          security:
            token_env: "bad name"
            tls: {cert: /c.pem, require_client_cert: yes}
          """, file: "p.yaml")
      Issue.record("accepted")
    } catch {
      let text = error.problems.map(\.description)
      #expect(
        text == [
          "p.yaml:1: model: a cluster with a coordinator needs the model (a preset name or its geometry)",
          "p.yaml:3: coordinator.state_dir: missing (required)",
          "p.yaml:8: worker.key_bits: pq codes take 4, 8, 12, 16 bits, got 3",
          "p.yaml:11: budgets.max_tokens: must be at least min_tokens (500), got 100",
          "p.yaml:13: security.token_env: must be an environment variable name, got \"bad name\"",
          "p.yaml:14: security.tls.key: missing (required)",
          "p.yaml:14: security.tls.ca: require_client_cert needs the CA that signs client certificates",
        ], "\(text)")
    }
  }

  @Test(
    "the token comes from the environment, else a private file; a configured source that gives none is an error"
  )
  func token() throws {
    let path = NSTemporaryDirectory() + "hkv-token-\(UInt64.random(in: 0...UInt64.max))"
    defer { try? FileManager.default.removeItem(atPath: path) }
    try "from-file\n".write(toFile: path, atomically: true, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
    let settings = SecuritySettings(tokenEnvironmentVariable: "T", tokenFile: path)
    #expect(try settings.resolveToken(environment: ["T": "from-env"]) == "from-env")
    #expect {
      try settings.resolveToken(environment: [:])
    } throws: { "\($0)".contains("readable by group or others") }
    try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
    #expect(try settings.resolveToken(environment: [:]) == "from-file")
    #expect {
      try SecuritySettings(tokenEnvironmentVariable: "T").resolveToken(environment: [:])
    } throws: { "\($0)".contains("T is not set") }
    #expect(try SecuritySettings().resolveToken(environment: [:]) == nil)
  }

  @Test(
    "a systemd credential (0400 plus an ACL that shows as group read) is accepted in $CREDENTIALS_DIRECTORY only"
  )
  func systemdCredential() throws {
    let directory = NSTemporaryDirectory() + "hkv-credentials-\(UInt64.random(in: 0...UInt64.max))"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let path = directory + "/token"
    try "from-systemd\n".write(toFile: path, atomically: true, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: 0o440], ofItemAtPath: path)
    let settings = SecuritySettings(tokenFile: path)
    #expect(
      try settings.resolveToken(environment: ["CREDENTIALS_DIRECTORY": directory])
        == "from-systemd")
    // The same mode elsewhere is refused, and "other" bits are refused even there.
    #expect {
      try settings.resolveToken(environment: [:])
    } throws: { "\($0)".contains("readable by group or others") }
    try FileManager.default.setAttributes([.posixPermissions: 0o444], ofItemAtPath: path)
    #expect {
      try settings.resolveToken(environment: ["CREDENTIALS_DIRECTORY": directory])
    } throws: { "\($0)".contains("readable by group or others") }
  }

  @Test("worker.output_mode reads exact or renormalized and names anything else")
  func outputMode() throws {
    let nodes =
      "memory_nodes: [{id: m0, data: 127.0.0.1:1, control: 127.0.0.1:2, capacity: 1GiB}]\n"
    let exact = try ClusterConfiguration.parse(
      yaml: "cluster: c\nworker: {output_mode: exact}\n" + nodes, file: "m.yaml")
    #expect(exact.worker.outputMode == .exact)
    let plain = try ClusterConfiguration.parse(yaml: "cluster: c\n" + nodes, file: "m.yaml")
    // The recommended configuration by default: exact output, recall where the codes fit.
    #expect(plain.worker.outputMode == .exact && plain.budgets.recall)
    #expect(plain.worker.tau == nil && plain.worker.tau(for: .hcattention) == 0.985)
    #expect(plain.worker.selection == .kvGroup)
    let perHead = try ClusterConfiguration.parse(
      yaml: "cluster: c\nworker: {selection: query_head}\n" + nodes, file: "m.yaml")
    #expect(perHead.worker.selection == .queryHead)
    #expect {
      try ClusterConfiguration.parse(
        yaml: "cluster: c\nworker: {selection: per_token}\n" + nodes, file: "m.yaml")
    } throws: { "\($0)".contains("selection") }
    let weights = try ClusterConfiguration.parse(
      yaml: "cluster: c\nworker: {output_mode: renormalized}\n" + nodes, file: "m.yaml")
    #expect(weights.worker.outputMode == .renormalized && !weights.budgets.recall)
    #expect {
      try ClusterConfiguration.parse(
        yaml: "cluster: c\nworker: {output_mode: raw}\n" + nodes, file: "m.yaml")
    } throws: {
      "\($0)".contains(
        "m.yaml:2: worker.output_mode: expected one of renormalized | exact, got \"raw\"")
    }
  }
}
