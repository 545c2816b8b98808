import Foundation
import HeteroKVCore
import HeteroKVEtcd
import Synchronization
import HeteroKVTestSupport
import Testing

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

  @Test(
    "a member that comes back after its connection failed serves the next call, not after the transport's backoff"
  )
  func memberComesBack() async throws {
    try await withEtcd(timeout: .seconds(5)) { client, cluster in
      cluster.kill(0)
      // Calls while it is down fail, and the connection backs off between reconnect attempts.
      for _ in 0..<2 {
        await #expect(throws: HeteroKVError.self) { try await client.put(bytes("/hkv/k"), [0]) }
      }
      try cluster.restart(0)
      let deadline = ContinuousClock.now + .seconds(20)
      while !cluster.acceptsConnections(0) {
        try #require(ContinuousClock.now < deadline, "etcd did not listen again")
        try await Task.sleep(for: .milliseconds(50))
      }
      // The first call after the member listens again succeeds: it waits for the reconnect
      // instead of failing on a connection still marked as failed.
      try await client.put(bytes("/hkv/k"), bytes("back"))
      #expect(try await client.range(bytes("/hkv/k")).kvs.first?.value == Data(bytes("back")))
    }
  }

  @Test("over mutual TLS: a client with the CA and its certificate is served; one without is not")
  func mutualTLS() async throws {
    let dir = NSTemporaryDirectory() + "hkv-etcd-tls-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let files = try EtcdCluster.makeTLSFiles(in: dir)
    let cluster = try EtcdCluster(members: 1, tls: files)
    defer { cluster.stop() }
    // Dialled by IP address, which cannot go as SNI: the certificate's name is sent instead.
    let tls = EtcdTLS(
      caPath: files.ca, certificatePath: files.clientCertificate, keyPath: files.clientKey,
      serverName: "etcd.test")
    let client = try EtcdClient(endpoints: cluster.endpoints, timeout: .seconds(2), tls: tls)
    let running = Task { try await client.run() }
    defer {
      client.shutdown()
      running.cancel()
    }
    try await cluster.waitUntilServing(client)
    try await client.put(bytes("/hkv/tls"), bytes("yes"))
    #expect(try await client.range(bytes("/hkv/tls")).kvs.first?.value == Data(bytes("yes")))
    for refused in [EtcdTLS(caPath: files.ca, serverName: "etcd.test"), nil] {
      let other = try EtcdClient(endpoints: cluster.endpoints, timeout: .seconds(2), tls: refused)
      let task = Task { try await other.run() }
      defer {
        other.shutdown()
        task.cancel()
      }
      do {
        try await other.put(bytes("/hkv/tls"), bytes("no"))
        Issue.record("etcd served a client without \(refused == nil ? "TLS" : "a certificate")")
      } catch {
        #expect(error.code == .unavailable, "\(error)")
      }
    }
    #expect(try await client.range(bytes("/hkv/tls")).kvs.first?.value == Data(bytes("yes")))
  }

  @Test(
    "with etcd's user authentication on: a client with the user's password is served; one without, or with a wrong password, is not"
  )
  func userAuthentication() async throws {
    try await withEtcd { anonymous, cluster in
      func etcdctl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/etcdctl")
        process.arguments =
          ["--endpoints=http://127.0.0.1:\(cluster.members[0].client)"] + arguments
        process.environment = ["ETCDCTL_API": "3"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "etcdctl \(arguments)")
      }
      try etcdctl(["user", "add", "root:secret"])
      try etcdctl(["auth", "enable"])
      let client = try EtcdClient(
        endpoints: cluster.endpoints, timeout: .seconds(2),
        credentials: EtcdCredentials(user: "root", password: "secret"))
      let running = Task { try await client.run() }
      defer {
        client.shutdown()
        running.cancel()
      }
      try await client.put(bytes("/hkv/auth"), bytes("yes"))
      #expect(try await client.range(bytes("/hkv/auth")).kvs.first?.value == Data(bytes("yes")))
      // The lease stream carries the token too.
      let lease = try await client.grantLease(ttl: 5)
      try await client.revokeLease(lease)
      let wrong = try EtcdClient(
        endpoints: cluster.endpoints, timeout: .seconds(2),
        credentials: EtcdCredentials(user: "root", password: "guess"))
      let task = Task { try await wrong.run() }
      defer {
        wrong.shutdown()
        task.cancel()
      }
      for refused in [anonymous, wrong] {
        do throws(HeteroKVError) {
          try await refused.put(bytes("/hkv/auth"), bytes("no"))
          Issue.record("etcd took a write from a client that did not authenticate")
        } catch {
          #expect(error.message.contains("etcd"), "\(error)")
        }
      }
      #expect(try await client.range(bytes("/hkv/auth")).kvs.first?.value == Data(bytes("yes")))
    }
  }
}
