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
