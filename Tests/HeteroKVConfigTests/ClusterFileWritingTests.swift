import HeteroKVConfig
import HeteroKVCore
import HeteroKVWire
import Testing

@Suite("Cluster file writing") struct ClusterFileWritingTests {
  @Test("settings written as YAML read back equal, every section and optional key included")
  func roundTrip() throws {
    var worker = WorkerSettings(
      control: HostPort(host: "::1", port: 7300), metrics: HostPort(host: "127.0.0.1", port: 0),
      keyCodec: .scalar, keyBits: 4, groupSize: 8, window: 32, sinks: 2, tau: 0.95,
      capSelection: true)
    worker.outputMode = .exact
    let full = ClusterConfiguration(
      name: "true",  // a name YAML would read as a boolean if it were not quoted
      model: try ModelGeometry.preset(named: "smollm2-135m"),
      coordinator: CoordinatorSettings(
        control: HostPort(host: "10.0.0.1", port: 7000),
        metrics: HostPort(host: "10.0.0.1", port: 9000), stateDirectory: "/var/lib/hkv: state",
        leaseSeconds: 7.5, heartbeatSeconds: 0.25, snapshotEvery: 64),
      memoryNodes: [
        MemoryNodeSettings(
          id: "0012", data: HostPort(host: "h1", port: 7100),
          control: HostPort(host: "h1", port: 7101), metrics: HostPort(host: "h1", port: 9101),
          capacityBytes: 3 << 30, pageBytes: 1 << 16, transport: .rdma),
        MemoryNodeSettings(
          id: "b", data: HostPort(host: "h2", port: 7100),
          control: HostPort(host: "h2", port: 7101), capacityBytes: 1 << 20),
      ],
      worker: worker,
      budgets: BudgetSettings(
        policy: .hcattention, memoryFraction: 0.125, minTokens: 16, maxTokens: 1 << 20,
        fullHeadCost: 0.2, stabilityThreshold: 0.4, similarityThreshold: 0.7,
        profileIntervalSteps: 32),
      replication: 2,
      security: SecuritySettings(
        tokenEnvironmentVariable: "HKV_TOKEN", tokenFile: "/etc/hkv/token",
        tls: TLSSettings(
          certificate: "/etc/hkv/cert.pem", key: "/etc/hkv/key.pem", ca: "/etc/hkv/ca.pem",
          requireClientCertificates: true, serverName: "hkv.internal"),
        tenants: [
          TenantSettings(
            name: "alice", tokenEnvironmentVariable: "HKV_ALICE", namespaces: [5, 6],
            quotaBytes: 1 << 30),
          TenantSettings(name: "bob", tokenFile: "/etc/hkv/bob", namespaces: [7]),
        ]))
    let text = try full.yaml()
    #expect(try ClusterConfiguration.parse(yaml: text) == full, "\(text)")
    var recalling = full
    recalling.budgets.policy = .heterocache
    recalling.budgets.recall = true
    recalling.worker.finerCodes = true
    let read = try ClusterConfiguration.parse(yaml: recalling.yaml())
    #expect(read.budgets.recall && read.worker.finerCodes)

    let minimal = ClusterConfiguration(
      name: "m",
      memoryNodes: [
        MemoryNodeSettings(
          id: "n", data: HostPort(host: "127.0.0.1", port: 1),
          control: HostPort(host: "127.0.0.1", port: 2), capacityBytes: 1 << 16)
      ])
    #expect(try ClusterConfiguration.parse(yaml: minimal.yaml()) == minimal)
  }

  @Test("tenants need a name, a token source, namespaces and the cluster token; names are unique")
  func tenantProblems() throws {
    let yaml = """
      cluster: t
      memory_nodes:
        - {id: n, data: "127.0.0.1:1", control: "127.0.0.1:2", capacity: 1MiB}
      security:
        tenants:
          - {name: alice, token_env: A, namespaces: [1, x]}
          - {name: alice, namespaces: [2]}
          - {name: cluster, token_env: C, namespaces: [3]}
      """
    do {
      _ = try ClusterConfiguration.parse(yaml: yaml)
      Issue.record("a file with bad tenants was accepted")
    } catch {
      let text = error.description
      for expected in [
        "a namespace is a number", "needs token_env or token_file", "used twice",
        "reserved or used twice", "need the cluster token",
      ] {
        #expect(text.contains(expected), "\(expected) missing from \(text)")
      }
    }
  }
}
