import Foundation
import HeteroKVCore
import HeteroKVEtcd
import Synchronization
import Testing

/// A TCP port free at the time of asking, on 127.0.0.1.
func freePort() throws -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
    }
  }
  guard bound else { throw CocoaError(.fileWriteUnknown) }
  return Int(UInt16(bigEndian: address.sin_port))
}

/// A real etcd cluster of `members` processes on loopback ports of its own, data in a
/// temporary directory; stopped (and its data removed) by ``stop()``. Needs `etcd` on the
/// PATH (Debian's etcd-server, which .ci/run installs).
final class EtcdCluster {
  struct Member {
    var name: String
    var client: Int
    var peer: Int
    var process: Process
  }
  let directory: String
  private(set) var members: [Member] = []

  init(members count: Int) throws {
    directory = NSTemporaryDirectory() + "hkv-etcd-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let ports = try (0..<count).map { _ in (try freePort(), try freePort()) }
    let names = (0..<count).map { "etcd\($0)" }
    let initial = zip(names, ports).map { "\($0)=http://127.0.0.1:\($1.1)" }.joined(
      separator: ",")
    for (i, name) in names.enumerated() {
      let process = Process()
      guard let etcd = Self.executable else {
        throw HeteroKVError(
          .unavailable, "etcd is not installed (apt-get install etcd-server; .ci/run does)")
      }
      process.executableURL = URL(fileURLWithPath: etcd)
      process.arguments = [
        "--name", name, "--data-dir", "\(directory)/\(name)",
        "--listen-client-urls", "http://127.0.0.1:\(ports[i].0)",
        "--advertise-client-urls", "http://127.0.0.1:\(ports[i].0)",
        "--listen-peer-urls", "http://127.0.0.1:\(ports[i].1)",
        "--initial-advertise-peer-urls", "http://127.0.0.1:\(ports[i].1)",
        "--initial-cluster", initial, "--initial-cluster-state", "new",
        "--initial-cluster-token", "hkv-test", "--log-level", "error",
      ]
      let log = "\(directory)/\(name).log"
      FileManager.default.createFile(atPath: log, contents: nil)
      process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
      process.standardOutput = FileHandle.nullDevice
      try process.run()
      members.append(Member(name: name, client: ports[i].0, peer: ports[i].1, process: process))
    }
  }

  static var executable: String? {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].first {
      FileManager.default.isExecutableFile(atPath: $0)
    }
  }

  var endpoints: [EtcdEndpoint] { members.map { EtcdEndpoint(host: "127.0.0.1", port: $0.client) } }

  /// Waits until a put through `client` succeeds (the cluster has a leader).
  func waitUntilServing(_ client: EtcdClient) async throws {
    let deadline = ContinuousClock.now + .seconds(30)
    while true {
      do {
        try await client.put(Array("ready".utf8), [1])
        return
      } catch {
        guard ContinuousClock.now < deadline else { throw error }
        try await Task.sleep(for: .milliseconds(100))
      }
    }
  }

  /// Stops member `index` (SIGKILL: no goodbye to its peers).
  func kill(_ index: Int) {
    let process = members[index].process
    guard process.isRunning else { return }
    Foundation.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }

  func stop() {
    for i in members.indices { kill(i) }
    try? FileManager.default.removeItem(atPath: directory)
  }

  deinit { stop() }
}

/// Runs `body` with a client of a fresh `members`-member etcd cluster, stopped afterwards.
func withEtcd<T: Sendable>(
  members: Int = 1, _ body: (EtcdClient, EtcdCluster) async throws -> T
) async throws -> T {
  let cluster = try EtcdCluster(members: members)
  defer { cluster.stop() }
  let client = try EtcdClient(endpoints: cluster.endpoints, timeout: .seconds(2))
  let running = Task { try await client.run() }
  defer {
    client.shutdown()
    running.cancel()
  }
  try await cluster.waitUntilServing(client)
  return try await body(client, cluster)
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Suite("etcd client against a real etcd", .serialized)
struct EtcdClientTests {
  @Test("put, range by key and prefix, delete; a create-if-absent transaction succeeds once")
  func keysAndTransactions() async throws {
    try await withEtcd { etcd, _ in
      for i in 0..<3 { try await etcd.put(bytes("/hkv/a/\(i)"), bytes("v\(i)")) }
      try await etcd.put(bytes("/hkv/b"), bytes("other"))
      let (kvs, revision) = try await etcd.range(prefix: bytes("/hkv/a/"))
      #expect(kvs.map { String(decoding: $0.value, as: UTF8.self) } == ["v0", "v1", "v2"])
      #expect(revision > 0)
      #expect(try await etcd.range(bytes("/hkv/b")).kvs.first?.value == Data(bytes("other")))
      #expect(
        try await etcd.delete(bytes("/hkv/a/"), end: EtcdClient.prefixEnd(bytes("/hkv/a/"))) == 3)
      #expect(try await etcd.range(prefix: bytes("/hkv/a/")).kvs.isEmpty)
      // Election's primitive: create the key only if nobody has.
      let key = bytes("/hkv/leader")
      let first = try await etcd.txn(
        [.created(key, at: 0)], success: [.put(key, bytes("coord-1"))], failure: [.get(key)])
      let second = try await etcd.txn(
        [.created(key, at: 0)], success: [.put(key, bytes("coord-2"))], failure: [.get(key)])
      #expect(first.succeeded)
      #expect(!second.succeeded)
      #expect(second.responses.first?.responseRange.kvs.first?.value == Data(bytes("coord-1")))
    }
  }

  @Test("a key on a lease lives while the keep-alive stream renews it and goes once it stops")
  func leaseKeepAlive() async throws {
    try await withEtcd { etcd, _ in
      let lease = try await etcd.grantLease(ttl: 2)
      try await etcd.put(bytes("/hkv/member"), bytes("up"), lease: lease)
      let renewals = Mutex(0)
      let keeper = Task {
        try await etcd.keepAlive(lease, every: .milliseconds(500)) { _ in
          renewals.withLock { $0 += 1 }
        }
      }
      try await Task.sleep(for: .seconds(4))
      #expect(try await etcd.range(bytes("/hkv/member")).kvs.count == 1, "alive past its TTL")
      #expect(renewals.withLock { $0 } >= 4)
      keeper.cancel()
      let deadline = ContinuousClock.now + .seconds(6)
      var gone = false
      while ContinuousClock.now < deadline {
        if try await etcd.range(bytes("/hkv/member")).kvs.isEmpty {
          gone = true
          break
        }
        try await Task.sleep(for: .milliseconds(100))
      }
      #expect(gone, "the key outlived its lease")
      // A revoked lease takes its keys at once.
      let second = try await etcd.grantLease(ttl: 30)
      try await etcd.put(bytes("/hkv/other"), bytes("up"), lease: second)
      try await etcd.revokeLease(second)
      #expect(try await etcd.range(bytes("/hkv/other")).kvs.isEmpty)
    }
  }

  @Test("a watch from a past revision delivers every change since, in order, then new ones")
  func watchFromRevision() async throws {
    try await withEtcd { etcd, _ in
      try await etcd.put(bytes("/hkv/log/1"), bytes("a"))
      let start = try await etcd.range(bytes("/hkv/log/1")).kvs[0].modRevision
      try await etcd.put(bytes("/hkv/log/2"), bytes("b"))
      try await etcd.delete(bytes("/hkv/log/1"))
      let seen = Mutex<[String]>([])
      let watcher = Task {
        try await etcd.watch(prefix: bytes("/hkv/log/"), from: start) { events, _ in
          seen.withLock {
            $0 += events.map {
              ($0.type == .delete ? "-" : "+") + String(decoding: $0.kv.key, as: UTF8.self)
            }
          }
        }
      }
      defer { watcher.cancel() }
      try await etcd.put(bytes("/hkv/log/3"), bytes("c"))
      let deadline = ContinuousClock.now + .seconds(10)
      while seen.withLock({ $0.count }) < 4 && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(50))
      }
      #expect(seen.withLock { $0 } == ["+/hkv/log/1", "+/hkv/log/2", "-/hkv/log/1", "+/hkv/log/3"])
    }
  }

  @Test(
    "a three-member cluster that loses one member keeps serving; losing two, writes fail clearly")
  func memberLoss() async throws {
    try await withEtcd(members: 3) { etcd, cluster in
      try await etcd.put(bytes("/hkv/k"), bytes("1"))
      // The member the client talks to first goes.
      cluster.kill(0)
      try await etcd.put(bytes("/hkv/k"), bytes("2"))
      #expect(try await etcd.range(bytes("/hkv/k")).kvs.first?.value == Data(bytes("2")))
      cluster.kill(1)
      do throws(HeteroKVError) {
        try await etcd.put(bytes("/hkv/k"), bytes("3"))
        Issue.record("a write without quorum succeeded")
      } catch {
        #expect(error.code == .unavailable, "\(error)")
        #expect(error.message.contains("etcd"), "\(error.message)")
      }
    }
  }
}
