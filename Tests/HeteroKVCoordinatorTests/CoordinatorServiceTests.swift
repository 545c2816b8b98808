import Foundation
import GRPCCore
import HeteroKVConfig
import HeteroKVCoordinator
import HeteroKVCoordinatorClient
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVWire
import Logging
import Metrics
import ServiceLifecycle
import HeteroKVTestSupport
import Testing

/// Runs `services` in a group until `body` returns, then shuts them down gracefully.
func withServices<T: Sendable>(
  _ services: [any Service], _ body: () async throws -> T
) async throws -> T {
  let group = ServiceGroup(services: services, logger: quietLogger)
  return try await withThrowingTaskGroup(of: Void.self) { tasks in
    tasks.addTask { try await group.run() }
    defer { tasks.cancelAll() }
    let result = try await body()
    await group.triggerGracefulShutdown()
    try await tasks.next()
    return result
  }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns the time taken.
func eventually(
  within timeout: Duration, _ condition: () async throws -> Bool
) async throws -> Duration? {
  let start = ContinuousClock.now
  while ContinuousClock.now - start < timeout {
    if try await condition() { return ContinuousClock.now - start }
    try await Task.sleep(for: .milliseconds(50))
  }
  return nil
}

@Suite("Coordinator over gRPC")
struct CoordinatorServiceTests {
  @Test(
    "members register and heartbeat through the agent; a silent one is down within one lease; budgets round-trip; the token is enforced"
  )
  func endToEnd() async throws {
    let security = ControlPlaneSecurity(token: "s3cret")
    let daemon = try CoordinatorDaemon(
      configuration: testCluster(lease: 2), store: InMemoryCoordinatorStore(), security: security,
      metricsFactory: NOOPMetricsHandler.instance, logger: quietLogger)
    try await withServices([daemon]) {
      let address = HostPort(host: "127.0.0.1", port: try await daemon.listeningPort())
      func agent(_ id: String) -> MembershipAgent {
        MembershipAgent(coordinator: address, security: security, logger: quietLogger) {
          .init(
            request: .with {
              $0.memberID = id
              $0.role = .memoryNode
              $0.dataAddress = "127.0.0.1:1"
              $0.controlAddress = "127.0.0.1:2"
              $0.capacityBytes = 1 << 30
              $0.transport = "tcp"
            }, usedBytes: { 4096 })
        }
      }
      try await withServices([agent("m0")]) {
        try await CoordinatorClient.with(address: address, security: security) { client in
          // m1 joins, then goes silent.
          try await withServices([agent("m1")]) {
            let joined = try await eventually(within: .seconds(10)) {
              try await client.nodes().members.filter { $0.status == "up" }.count == 2
            }
            #expect(joined != nil)
          }
          let lapsed = try await eventually(within: .seconds(10)) {
            try await client.nodes().members.first { $0.memberID == "m1" }?.status == "down"
          }
          let took = try #require(lapsed)
          // Lease 2 s (1 s missed heartbeats under a loaded 2-core machine), checked four times
          // a lease: down well within a second lease period.
          #expect(took < .seconds(4))
          let nodes = try await client.nodes().members
          #expect(nodes.first { $0.memberID == "m0" }?.status == "up")
          #expect(nodes.first { $0.memberID == "m0" }?.usedBytes == 4096)

          let placement = try await client.openSequence(
            .with {
              $0.ref = .with { $0.sequence = 77 }
              $0.workerID = "w0"
              $0.maxTokens = 4096
            })
          #expect(placement.nodes.map(\.nodeID) == ["m0"])
          #expect(placement.version == 1)
          let reported = try await client.reportProfiles(
            .with {
              $0.ref = .with { $0.sequence = 77 }
              $0.prefillTokens = 2048
              $0.heads = testProfiles().map(report)
            })
          let read = try await client.budgets(sequence: 77, layer: 1)
          #expect(read.sequences.count == 1)
          #expect(read.sequences[0].heads.map(\.layer) == [1, 1, 1, 1])
          #expect(read.sequences[0].heads == Array(reported.heads.suffix(4)))
          #expect(reported.heads[1].role == "satellite")
          #expect(reported.heads[1].similarity == 0.8)
          // Errors carry the coordinator's message and code.
          do {
            _ = try await client.budgets(sequence: 78, layer: nil)
            Issue.record("budgets of a sequence never opened")
          } catch let error as HeteroKVError {
            #expect(error.code == .notFound)
            #expect((error.cause as? RPCError)?.code == .notFound)
            #expect(error.description.contains("no open sequence 0/78"))
          }
        }
        // Without the token, or with another, nothing is answered.
        for wrong in [nil, "guess"] as [String?] {
          do {
            _ = try await CoordinatorClient.with(
              address: address, security: ControlPlaneSecurity(token: wrong)
            ) { try await $0.status() }
            Issue.record("status answered without the right token")
          } catch let error as HeteroKVError {
            #expect(error.code == .unauthenticated)
          }
        }
      }
    }
  }
}

func report(_ p: HeadProfile) -> Heterokv_V1_HeadProfileReport {
  .with {
    $0.layer = UInt32(p.layer)
    $0.kvHead = UInt32(p.kvHead)
    $0.stability = p.stability
    $0.similarity = p.similarity
    $0.role = p.role.name
    if case .satellite(let pivot) = p.role { $0.pivot = UInt32(pivot) }
  }
}

@Suite("Control plane over TLS")
struct ControlPlaneTLSTests {
  /// A CA and a server certificate for `hkv-coordinator.test` and 127.0.0.1, made by openssl.
  func makeCertificates(in dir: String) throws {
    let script = """
      set -e
      cd '\(dir)'
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 1 -subj /CN=hkv-test-ca 2>/dev/null
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout server.key -out server.csr -subj /CN=hkv-coordinator.test 2>/dev/null
      printf 'subjectAltName=DNS:hkv-coordinator.test,IP:127.0.0.1\\n' > san.ext
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 1 -extfile san.ext 2>/dev/null
      """
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", script]
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
      throw CocoaError(
        .fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "openssl failed in \(dir)"])
    }
  }

  @Test(
    "with TLS, a client trusting the CA is served; a plaintext client and one trusting another CA are not"
  )
  func tls() async throws {
    let dir = temporaryDirectory()
    let other = temporaryDirectory()
    defer {
      try? FileManager.default.removeItem(atPath: dir)
      try? FileManager.default.removeItem(atPath: other)
    }
    try makeCertificates(in: dir)
    try makeCertificates(in: other)
    let tls = TLSSettings(
      certificate: dir + "/server.pem", key: dir + "/server.key", ca: dir + "/ca.pem",
      serverName: "hkv-coordinator.test")
    let server = ControlPlaneSecurity(token: "t", tls: tls)
    let daemon = try CoordinatorDaemon(
      configuration: testCluster(), store: InMemoryCoordinatorStore(), security: server,
      metricsFactory: NOOPMetricsHandler.instance, logger: quietLogger)
    try await withServices([daemon]) {
      let address = HostPort(host: "127.0.0.1", port: try await daemon.listeningPort())
      let status = try await CoordinatorClient.with(address: address, security: server) {
        try await $0.status()
      }
      #expect(status.cluster == "test")
      var untrusted = tls
      untrusted.ca = other + "/ca.pem"
      for client in [
        ControlPlaneSecurity(token: "t"), ControlPlaneSecurity(token: "t", tls: untrusted),
      ] {
        do {
          _ = try await CoordinatorClient.with(
            address: address, security: client, timeout: .seconds(3)
          ) { try await $0.status() }
          Issue.record("served a client that should not have connected: \(client)")
        } catch let error as HeteroKVError {
          #expect(error.code.isUnreachable, "\(error)")
        }
      }
    }
  }
}
