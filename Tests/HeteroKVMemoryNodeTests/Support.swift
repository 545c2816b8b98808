import Foundation
import CoreMetrics
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVMemoryNode
import HeteroKVTransport
import HeteroKVWire
import HeteroKVTestSupport
import Logging
import ServiceLifecycle

/// A logger that prints nothing (tests run many nodes at once).

/// A memory node started in-process on loopback, with its addresses and a client.
struct RunningNode {
  let node: MemoryNode
  let addresses: MemoryNodeAddresses
  var endpoint: MemoryNodeEndpoint {
    MemoryNodeEndpoint(
      id: node.configuration.id, data: addresses.data, transport: addresses.transport)
  }
}

func nodeConfiguration(
  _ id: String, capacity: Int = 64 << 20, pageBytes: Int = 64 << 10,
  transport: DataPlaneTransportKind = .tcp
) -> MemoryNodeConfiguration {
  MemoryNodeConfiguration(
    id: id, data: HostPort(host: "127.0.0.1", port: 0),
    control: HostPort(host: "127.0.0.1", port: 0), capacityBytes: capacity, pageBytes: pageBytes,
    transport: transport)
}

/// Runs `configurations` as real servers on loopback ports chosen by the system, in one
/// service group, calls `body`, then shuts them down gracefully.
func withRunningNodes<T: Sendable>(
  _ configurations: [MemoryNodeConfiguration],
  metricsFactory: any MetricsFactory = NOOPMetricsHandler.instance,
  _ body: @Sendable ([RunningNode]) async throws -> T
) async throws -> T {
  let nodes = try configurations.map {
    try MemoryNode(configuration: $0, metricsFactory: metricsFactory, logger: quietLogger)
  }
  let group = ServiceGroup(
    configuration: .init(
      services: nodes.map { .init(service: $0) }, gracefulShutdownSignals: [],
      logger: quietLogger))
  return try await withThrowingTaskGroup(of: Void.self) { tasks in
    tasks.addTask { try await group.run() }
    do {
      var running: [RunningNode] = []
      for node in nodes {
        running.append(RunningNode(node: node, addresses: try await node.listeningAddresses()))
      }
      let result = try await body(running)
      await group.triggerGracefulShutdown()
      try await tasks.waitForAll()
      return result
    } catch {
      await group.triggerGracefulShutdown()
      try? await tasks.waitForAll()
      throw error
    }
  }
}

/// Deterministic pseudo-random test data, from the core's seeded generator.
struct TestRandom {
  private var generator: SeededGenerator
  init(state: UInt64) { generator = SeededGenerator(seed: state) }
  mutating func next() -> UInt64 { generator.next() }
  mutating func float() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
  mutating func halves(_ n: Int) -> [Float16] { (0..<n).map { _ in Float16(float()) } }
  mutating func int(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// Expects `body` to throw a ``HeteroKVError`` of `code`; returns it.
@discardableResult
func expectDataPlaneError(
  _ code: HeteroKVError.Code, _ body: () async throws -> Void,
  sourceLocation: SourceLocation = #_sourceLocation
) async -> HeteroKVError? {
  do {
    try await body()
    Issue.record("expected \(code)", sourceLocation: sourceLocation)
  } catch let error as HeteroKVError {
    #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    return error
  } catch {
    Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
  }
  return nil
}

import Testing

/// A cluster file in a temporary folder with one memory node `id` on free loopback ports
/// (32 MiB, 16 KiB pages), for `hkv memnode` child processes; the caller removes it.
func oneNodeClusterFile(_ id: String, cluster: String = "test") throws -> URL {
  let file = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-\(UUID()).yaml")
  try """
  cluster: \(cluster)
  memory_nodes:
    - id: \(id)
      data: 127.0.0.1:0
      control: 127.0.0.1:0
      metrics: 127.0.0.1:0
      capacity: 32MiB
      page_size: 16KiB
  """.write(to: file, atomically: true, encoding: .utf8)
  return file
}
