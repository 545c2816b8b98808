import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import HeteroKVDaemon
import HeteroKVTestSupport
import HeteroKVWire
import Testing

/// The gRPC health service's answer at `address` for `service`.
func healthStatus(_ address: HostPort, service: String = "") async throws
  -> Grpc_Health_V1_HealthCheckResponse.ServingStatus
{
  try await withGRPCClient(
    transport: .http2NIOPosix(
      target: .ipv4(address: address.host, port: address.port), transportSecurity: .plaintext)
  ) { client in
    try await Grpc_Health_V1_Health.Client(wrapping: client).check(.with { $0.service = service })
      .status
  }
}

/// Polls `path` at `address` until its response contains `expected` (up to `timeout`).
func waitForHTTP(
  _ address: HostPort, _ path: String, toContain expected: String,
  timeout: Duration = .seconds(30)
) async throws -> String {
  let deadline = ContinuousClock.now + timeout
  var last = ""
  while ContinuousClock.now < deadline {
    last = (try? await httpGet(address.host, address.port, path)) ?? ""
    if last.contains(expected) { return last }
    try await Task.sleep(for: .milliseconds(200))
  }
  return last
}

@Suite("Every daemon's probes: /healthz, /readyz, /metrics and gRPC health", .serialized)
struct DaemonProbeTests {
  @Test(
    "coordinator, memory node and worker processes answer /healthz, /readyz, their own /metrics and gRPC health (no token needed where one guards the rest); the worker is unready while its coordinator is down and ready again when it is back"
  )
  func probes() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hkv-probes-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let token = dir.appendingPathComponent("token").path
    try "probe-secret\n".write(toFile: token, atomically: true, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: token)
    func clusterFile(coordinatorPort: Int) -> String {
      """
      cluster: probes
      security: {token_file: \(token)}
      model: {name: tiny, layers: 1, query_heads: 4, kv_heads: 2, head_dim: 64}
      coordinator:
        control: 127.0.0.1:\(coordinatorPort)
        metrics: 127.0.0.1:0
        state_dir: \(dir.path)/state
        lease: 3s
        heartbeat: 500ms
      worker: {control: 127.0.0.1:0, metrics: 127.0.0.1:0}
      memory_nodes:
        - {id: m0, data: 127.0.0.1:0, control: 127.0.0.1:0, metrics: 127.0.0.1:0, capacity: 64MiB}
      """
    }
    let started = try startCoordinator(in: dir, clusterFile: clusterFile)
    let coordinator = started.process
    let control = started.address
    let file = started.clusterFile
    let node = try HKVDaemonProcess(["memnode", "--config", file, "--id", "m0"])
    try node.waitUntilReady()
    let worker = try HKVDaemonProcess(["worker", "--config", file])
    try worker.waitUntilReady()
    defer {
      worker.kill()
      node.kill()
      coordinator.kill()
    }

    // Each ready line names the version and build.
    for daemon in [coordinator, node, worker] {
      #expect(daemon.fields["version"] == HeteroKVBuild.version)
      #expect(daemon.fields["build"]?.isEmpty == false)
    }
    let daemons: [(role: String, metrics: HostPort, grpc: HostPort, own: String, service: String)] =
      [
        (
          "coordinator", try #require(coordinator.address("metrics")), control,
          "hkv_coordinator_members", "heterokv.v1.Coordinator"
        ),
        (
          "memnode", try #require(node.address("metrics")), try #require(node.address("control")),
          "hkv_memnode_capacity_bytes", "heterokv.v1.MemoryNodeControl"
        ),
        (
          "worker", try #require(worker.address("metrics")), try #require(worker.address("engine")),
          "hkv_worker_open_sequences", "heterokv.v1.Engine"
        ),
      ]
    for d in daemons {
      let live = try await httpGet(d.metrics.host, d.metrics.port, "/healthz")
      #expect(live.hasPrefix("HTTP/1.1 200"), "\(d.role) /healthz: \(live)")
      let ready = try await waitForHTTP(d.metrics, "/readyz", toContain: "HTTP/1.1 200")
      #expect(ready.contains("\nready\n") || ready.contains("\r\n\r\nready"), "\(d.role): \(ready)")
      let metrics = try await httpGet(d.metrics.host, d.metrics.port, "/metrics")
      #expect(metrics.contains("hkv_build_info{"), "\(d.role)")
      #expect(metrics.contains(#"role="\#(d.role)""#), "\(d.role)")
      #expect(metrics.contains(d.own), "\(d.role) /metrics lacks \(d.own)")
      #expect(try await healthStatus(d.grpc) == .serving, "\(d.role)")
      #expect(try await healthStatus(d.grpc, service: d.service) == .serving, "\(d.role)")
      await #expect(throws: RPCError.self) {
        _ = try await healthStatus(d.grpc, service: "no.such.Service")
      }
    }
    // The token guards everything but health.
    await #expect(throws: RPCError.self) {
      try await withControlClient(daemons[1].grpc) { _ = try await $0.describe(.init()) }
    }
    // The worker's metrics are histograms and counters of its own.
    let workerMetrics = try await httpGet(
      daemons[2].metrics.host, daemons[2].metrics.port, "/metrics")
    for name in [
      "hkv_worker_resident_bytes", "hkv_worker_under_replicated_shards",
      "hkv_worker_failed_calls_total",
    ] {
      #expect(workerMetrics.contains(name), "worker /metrics lacks \(name)")
    }

    // Without its coordinator the worker cannot place sequences: not ready, and says why.
    coordinator.kill()
    let unready = try await waitForHTTP(daemons[2].metrics, "/readyz", toContain: "HTTP/1.1 503")
    #expect(unready.contains("HTTP/1.1 503"), "\(unready)")
    #expect(unready.contains("waiting coordinator"), "\(unready)")
    #expect(try await healthStatus(daemons[2].grpc) == .notServing)
    // The memory node still serves its data plane.
    let nodeReady = try await httpGet(daemons[1].metrics.host, daemons[1].metrics.port, "/readyz")
    #expect(nodeReady.hasPrefix("HTTP/1.1 200"), "\(nodeReady)")
    // The coordinator back on its port (its state on disk): the worker's heartbeats are
    // accepted again and it is ready without registering anew.
    let restarted = try HKVDaemonProcess(["coordinator", "--config", file])
    try restarted.waitUntilReady()
    defer { restarted.kill() }
    let again = try await waitForHTTP(daemons[2].metrics, "/readyz", toContain: "HTTP/1.1 200")
    #expect(again.contains("HTTP/1.1 200"), "\(again)")
    #expect(try await healthStatus(daemons[2].grpc) == .serving)
    #expect(try await worker.terminate() == 0)
    #expect(try await node.terminate() == 0)
  }

  @Test("hkv --version prints the version and build")
  func version() throws {
    let run = try runHKV(["--version"])
    #expect(run.status == 0)
    let text = String(decoding: run.out, as: UTF8.self)
    #expect(text.contains(HeteroKVBuild.version), "\(text)")
    #expect(text.contains(HeteroKVBuild.build), "\(text)")
  }
}
