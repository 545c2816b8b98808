import Foundation
import HeteroKVCore
import HeteroKVEtcd
import Synchronization

/// Ports this test process has handed out, never handed out twice.
private let handedOutPorts = Mutex<Set<Int>>([])

/// A TCP port free at the time of asking, on 127.0.0.1, for a server a test starts. It is
/// drawn below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by default),
/// where the source ports of outgoing connections come from: a port the kernel picked with
/// bind(0) could be taken by some client's connection before the server binds it.
public func freeLoopbackPort() throws -> Int {
  for _ in 0..<1000 {
    let port = Int.random(in: 10_240..<32_768)
    guard handedOutPorts.withLock({ $0.insert(port).inserted }) else { continue }
    if loopbackPortIsFree(port) { return port }
  }
  throw HeteroKVError(.unavailable, "no free loopback port below the ephemeral range")
}

private func loopbackPortIsFree(_ port: Int) -> Bool {
  onLoopbackSocket(port: port) { bind($0, $1, $2) == 0 }
}

/// `body` with a fresh TCP socket and the address 127.0.0.1:`port` (to bind or connect);
/// the socket is closed after.
func onLoopbackSocket(
  port: Int, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Bool
) -> Bool {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  address.sin_port = UInt16(port).bigEndian
  return withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      body(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
    }
  }
}

/// A real etcd cluster of `members` processes on loopback ports of its own, data in a
/// temporary directory; stopped (and its data removed) by ``stop()``. Needs `etcd` on the
/// PATH (Debian's etcd-server, which .ci/run installs).
public final class EtcdCluster {
  public struct Member {
    public var name: String
    public var client: Int
    public var peer: Int
    public var process: Process
    var arguments: [String]
  }
  public let directory: String
  /// Whether clients are served over TLS (``init(members:tls:)``).
  public let servesTLS: Bool
  public private(set) var members: [Member] = []

  /// PEM files for members that serve clients over mutual TLS (``makeTLSFiles(in:)``).
  public struct TLSFiles: Sendable {
    public var ca, serverCertificate, serverKey, clientCertificate, clientKey: String
  }

  /// A CA, a certificate for 127.0.0.1 the members present, and a client certificate, made by
  /// openssl in `directory`.
  public static func makeTLSFiles(in directory: String) throws -> TLSFiles {
    let script = """
      set -e
      cd '\(directory)'
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 1 -subj /CN=hkv-etcd-test-ca 2>/dev/null
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout server.key -out server.csr -subj /CN=etcd.test 2>/dev/null
      printf 'subjectAltName=DNS:etcd.test,IP:127.0.0.1\\n' > san.ext
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 1 -extfile san.ext 2>/dev/null
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout client.key -out client.csr -subj /CN=hkv-coordinator 2>/dev/null
      openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out client.pem -days 1 2>/dev/null
      """
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", script]
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
      throw HeteroKVError(.unavailable, "openssl could not make test certificates in \(directory)")
    }
    return TLSFiles(
      ca: directory + "/ca.pem", serverCertificate: directory + "/server.pem",
      serverKey: directory + "/server.key", clientCertificate: directory + "/client.pem",
      clientKey: directory + "/client.key")
  }

  public convenience init(members count: Int) throws { try self.init(members: count, tls: nil) }

  /// `count` members; with `tls`, clients are served over TLS and must present a certificate
  /// the CA signed.
  public init(members count: Int, tls: TLSFiles?) throws {
    directory = NSTemporaryDirectory() + "hkv-etcd-\(UUID().uuidString)"
    servesTLS = tls != nil
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let ports = try (0..<count).map { _ in (try freeLoopbackPort(), try freeLoopbackPort()) }
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
      let scheme = tls == nil ? "http" : "https"
      process.arguments = [
        "--name", name, "--data-dir", "\(directory)/\(name)",
        "--listen-client-urls", "\(scheme)://127.0.0.1:\(ports[i].0)",
        "--advertise-client-urls", "\(scheme)://127.0.0.1:\(ports[i].0)",
        "--listen-peer-urls", "http://127.0.0.1:\(ports[i].1)",
        "--initial-advertise-peer-urls", "http://127.0.0.1:\(ports[i].1)",
        "--initial-cluster", initial, "--initial-cluster-state", "new",
        "--initial-cluster-token", "hkv-test", "--log-level", "error",
      ]
      if let tls {
        process.arguments! += [
          "--cert-file", tls.serverCertificate, "--key-file", tls.serverKey,
          "--trusted-ca-file", tls.ca, "--client-cert-auth",
        ]
      }
      let log = "\(directory)/\(name).log"
      _ = FileManager.default.createFile(atPath: log, contents: nil)
      process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
      process.standardOutput = FileHandle.nullDevice
      try process.run()
      members.append(
        Member(
          name: name, client: ports[i].0, peer: ports[i].1, process: process,
          arguments: process.arguments ?? []))
    }
  }

  public static var executable: String? {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].first {
      FileManager.default.isExecutableFile(atPath: $0)
    }
  }

  public var endpoints: [EtcdEndpoint] {
    members.map { EtcdEndpoint(host: "127.0.0.1", port: $0.client) }
  }

  /// Waits until a put through `client` succeeds (the cluster has a leader) and, with more
  /// than one member, until every member answers a read of its own.
  public func waitUntilServing(_ client: EtcdClient) async throws {
    let deadline = ContinuousClock.now + .seconds(30)
    try await retry(until: deadline) { try await client.put(Array("ready".utf8), [1]) }
    guard members.count > 1, !servesTLS else { return }
    for endpoint in endpoints {
      try await withEtcdClient([endpoint]) { single in
        try await retry(until: deadline) { _ = try await single.range(Array("ready".utf8)) }
      }
    }
  }

  private func retry(
    until deadline: ContinuousClock.Instant, _ body: () async throws -> Void
  ) async throws {
    while true {
      do {
        return try await body()
      } catch {
        guard ContinuousClock.now < deadline else { throw error }
        try await Task.sleep(for: .milliseconds(100))
      }
    }
  }

  /// Stops member `index` (SIGKILL: no goodbye to its peers).
  public func kill(_ index: Int) {
    let process = members[index].process
    guard process.isRunning else { return }
    Foundation.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }

  /// Starts member `index` again on its data directory (after ``kill(_:)``).
  public func restart(_ index: Int) throws {
    guard !members[index].process.isRunning, let etcd = Self.executable else { return }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: etcd)
    process.arguments = members[index].arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    members[index].process = process
  }

  /// Whether member `index` accepts TCP connections on its client port.
  public func acceptsConnections(_ index: Int) -> Bool {
    onLoopbackSocket(port: members[index].client) { connect($0, $1, $2) == 0 }
  }

  public func stop() {
    for i in members.indices { kill(i) }
    try? FileManager.default.removeItem(atPath: directory)
  }

  deinit { stop() }
}

/// Runs `body` with a client of `endpoints` whose connections run for its duration, and shut
/// down afterwards.
public func withEtcdClient<T: Sendable>(
  _ endpoints: [EtcdEndpoint], timeout: Duration = .seconds(2), tls: EtcdTLS? = nil,
  _ body: (EtcdClient) async throws -> T
) async throws -> T {
  let client = try EtcdClient(endpoints: endpoints, timeout: timeout, tls: tls)
  let running = Task { try await client.run() }
  defer {
    client.shutdown()
    running.cancel()
  }
  return try await body(client)
}

/// Runs `body` with a client of a fresh `members`-member etcd cluster, stopped afterwards.
public func withEtcd<T: Sendable>(
  members: Int = 1, timeout: Duration = .seconds(2),
  _ body: (EtcdClient, EtcdCluster) async throws -> T
) async throws -> T {
  let cluster = try EtcdCluster(members: members)
  defer { cluster.stop() }
  return try await withEtcdClient(cluster.endpoints, timeout: timeout) { client in
    try await cluster.waitUntilServing(client)
    return try await body(client, cluster)
  }
}
