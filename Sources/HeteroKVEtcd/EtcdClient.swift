import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import GRPCProtobuf
import HeteroKVCore
import Synchronization

/// One etcd member's client address.
public struct EtcdEndpoint: Sendable, Hashable, CustomStringConvertible {
  public var host: String
  public var port: Int

  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  public var description: String { "\(host):\(port)" }
}

/// How the client secures its connections to etcd: TLS with the members' CA and, where etcd
/// demands client certificates (`--client-cert-auth`, etcd's usual way to authenticate
/// clients), this client's certificate and key. PEM files.
public struct EtcdTLS: Sendable, Hashable {
  /// CA bundle the members' certificates are verified with; none: the system's roots.
  public var caPath: String?
  /// This client's certificate chain and key, for mutual TLS.
  public var certificatePath: String?
  public var keyPath: String?
  /// The name expected in the members' certificates (sent as SNI), when dialled by address.
  public var serverName: String?

  public init(
    caPath: String? = nil, certificatePath: String? = nil, keyPath: String? = nil,
    serverName: String? = nil
  ) {
    self.caPath = caPath
    self.certificatePath = certificatePath
    self.keyPath = keyPath
    self.serverName = serverName
  }

  var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
    .tls {
      if let ca = caPath { $0.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
      if let certificate = certificatePath, let key = keyPath {
        $0.certificateChain = [.file(path: certificate, format: .pem)]
        $0.privateKey = .file(path: key, format: .pem)
      }
    }
  }
}

/// A user etcd authenticates by name and password (etcd's `auth enable`): exchanged for a
/// token that every call carries, and exchanged again when etcd says the token expired.
public struct EtcdCredentials: Sendable, Hashable {
  public var user: String
  public var password: String

  public init(user: String, password: String) {
    self.user = user
    self.password = password
  }
}

/// A client of etcd's v3 gRPC API (the subset in Proto/etcd): key ranges, puts, deletes and
/// transactions, leases with a keep-alive stream, and watches. It keeps one connection per
/// endpoint and sends each call to the endpoint that answered last, moving to the next when
/// one cannot be reached, so a cluster that loses a member keeps serving. ``run()`` keeps the
/// connections; call it in a task (or a service group) for the client's lifetime.
public final class EtcdClient: Sendable {
  /// The members, in the order tried.
  public let endpoints: [EtcdEndpoint]
  /// Deadline of one unary call.
  public let timeout: Duration
  let clients: [GRPCClient<HTTP2ClientTransport.Posix>]
  private let current = Mutex(0)
  private let credentials: EtcdCredentials?
  private let token = Mutex<String?>(nil)

  /// A client of the members at `endpoints` (at least one), over TLS when `tls` is given, as
  /// the user `credentials` name where etcd authenticates users.
  public init(
    endpoints: [EtcdEndpoint], timeout: Duration = .seconds(5), tls: EtcdTLS? = nil,
    credentials: EtcdCredentials? = nil
  ) throws(HeteroKVError) {
    self.credentials = credentials
    guard !endpoints.isEmpty else {
      throw HeteroKVError(.invalidArgument, "etcd needs at least one endpoint")
    }
    self.endpoints = endpoints
    self.timeout = timeout
    var clients: [GRPCClient<HTTP2ClientTransport.Posix>] = []
    for endpoint in endpoints {
      do {
        clients.append(
          GRPCClient(
            transport: try HTTP2ClientTransport.Posix(
              target: .dns(host: endpoint.host, port: endpoint.port),
              transportSecurity: tls?.transportSecurity ?? .plaintext,
              config: .defaults {
                if let name = tls?.serverName { $0.http2.authority = name }
                // A member that comes back is dialled again within two seconds, not after
                // the transport's default backoff of up to two minutes.
                $0.backoff = .init(
                  initial: .milliseconds(100), max: .seconds(2), multiplier: 1.6, jitter: 0.2)
              })))
      } catch {
        throw HeteroKVError(.invalidArgument, "etcd endpoint \(endpoint): \(error)", cause: error)
      }
    }
    self.clients = clients
  }

  /// Runs every member's connections until ``shutdown()``.
  public func run() async throws {
    try await withThrowingDiscardingTaskGroup { group in
      for client in clients { group.addTask { try await client.runConnections() } }
    }
  }

  /// Stops the connections once in-flight calls finish.
  public func shutdown() {
    for client in clients { client.beginGracefulShutdown() }
  }

  /// Runs `body` on the member that answered last, then on each other member in turn when one
  /// cannot be reached; errors name etcd and the member. With credentials, `body` gets the
  /// token's metadata, and a call refused for an expired or missing token is authenticated
  /// again and retried once.
  func call<T: Sendable>(
    _ what: String,
    _ body: (GRPCClient<HTTP2ClientTransport.Posix>, CallOptions, Metadata) async throws -> T
  ) async throws(HeteroKVError) -> T {
    var options = CallOptions.defaults
    options.timeout = timeout
    // A member that is down fails the call at once (and the next member is tried) instead of
    // holding it until the deadline while its connection retries.
    options.waitForReady = false
    let first = current.withLock { $0 }
    var failures: [String] = []
    var unreached: [Int] = []
    for step in 0..<clients.count {
      let index = (first + step) % clients.count
      let outcome = try await attempt(what, on: index, options: options, body)
      switch outcome {
      case .answered(let result):
        if step > 0 { current.withLock { $0 = index } }
        return result
      case .failed(let code, let message):
        failures.append("\(endpoints[index]): \(code) \(message)")
        if code == .unavailable { unreached.append(index) }
      }
    }
    // No member answered. A member whose connection is between reconnect attempts fails fast
    // above even when it is up again (a restarted member, or one that was not listening yet
    // when the client first dialled it). So the unreachable ones are probed together with a
    // read that waits for its connection, within one more deadline, and the call goes once
    // more to the first that answers. Like the failover above, that can repeat a call a
    // member received before its connection broke; the callers' writes tolerate it (appends
    // check for their own entry, an election revokes its own key).
    if let index = await firstReachable(unreached) {
      switch try await attempt(what, on: index, options: options, body) {
      case .answered(let result):
        current.withLock { $0 = index }
        return result
      case .failed(let code, let message):
        failures.append("\(endpoints[index]) (reconnected): \(code) \(message)")
      }
    }
    throw HeteroKVError(
      .unavailable, "etcd \(what): no member answered (\(failures.joined(separator: "; ")))")
  }

  /// The first of `members` to answer a one-key read that waits for its connection, all
  /// probed at once within one deadline; nil when none does.
  private func firstReachable(_ members: [Int]) async -> Int? {
    guard !members.isEmpty else { return nil }
    var waiting = CallOptions.defaults
    waiting.timeout = timeout
    waiting.waitForReady = true
    let options = waiting
    let probe = Etcdserverpb_RangeRequest.with {
      $0.key = Data([0])
      $0.limit = 1
      $0.keysOnly = true
    }
    return await withTaskGroup(of: Int?.self) { group in
      for index in members {
        group.addTask {
          let answered = try? await self.attempt("Range", on: index, options: options) {
            client, options, metadata in
            try await Etcdserverpb_KV.Client(wrapping: client).range(
              probe, metadata: metadata, options: options)
          }
          if case .answered = answered { return index }
          return nil
        }
      }
      for await index in group where index != nil {
        group.cancelAll()
        return index
      }
      return nil
    }
  }

  private enum Attempt<T> {
    case answered(T)
    /// The member could not serve the call (down, unreachable, past the deadline).
    case failed(RPCError.Code, String)
  }

  /// One member's try at `body`, authenticating again once where the token expired; errors
  /// other than the member's unavailability are thrown as the call's answer.
  private func attempt<T: Sendable>(
    _ what: String, on index: Int, options: CallOptions,
    _ body: (GRPCClient<HTTP2ClientTransport.Posix>, CallOptions, Metadata) async throws -> T
  ) async throws(HeteroKVError) -> Attempt<T> {
    var reauthenticated = false
    while true {
      do {
        let metadata = try await authentication(on: clients[index], options: options)
        return .answered(try await body(clients[index], options, metadata))
      } catch let error as RPCError
        where [.unavailable, .deadlineExceeded, .cancelled].contains(error.code)
      {
        return .failed(error.code, error.message)
      } catch let error as RPCError
        where credentials != nil && !reauthenticated
        && (error.code == .unauthenticated || error.message.contains("auth token"))
      {
        token.withLock { $0 = nil }
        reauthenticated = true
      } catch let error as RPCError {
        throw HeteroKVError(
          Self.code(error.code), "etcd \(what) at \(endpoints[index]): \(error.message)",
          cause: error)
      } catch {
        throw HeteroKVError(
          .unavailable, "etcd \(what) at \(endpoints[index]): \(error)", cause: error)
      }
    }
  }

  /// The `token` metadata of the current token, authenticating first when there is none.
  private func authentication(
    on client: GRPCClient<HTTP2ClientTransport.Posix>, options: CallOptions
  ) async throws -> Metadata {
    guard let credentials else { return [:] }
    if let token = token.withLock({ $0 }) { return Self.metadata(token) }
    let answer = try await Etcdserverpb_Auth.Client(wrapping: client).authenticate(
      .with {
        $0.name = credentials.user
        $0.password = credentials.password
      }, options: options)
    token.withLock { $0 = answer.token }
    return Self.metadata(answer.token)
  }

  private static func metadata(_ token: String) -> Metadata {
    var metadata = Metadata()
    metadata.addString(token, forKey: "token")
    return metadata
  }

  static func code(_ code: RPCError.Code) -> HeteroKVError.Code {
    switch code {
    case .invalidArgument, .outOfRange: .invalidArgument
    case .notFound: .notFound
    case .failedPrecondition: .failedPrecondition
    case .resourceExhausted: .resourceExhausted
    case .permissionDenied, .unauthenticated: .permissionDenied
    default: .unavailable
    }
  }

  // MARK: KV

  /// The keys in `[key, rangeEnd)` (just `key` when `rangeEnd` is nil), and the store's
  /// revision when they were read.
  public func range(_ key: [UInt8], end rangeEnd: [UInt8]? = nil, limit: Int = 0)
    async throws(HeteroKVError) -> (kvs: [Etcdserverpb_KeyValue], revision: Int64)
  {
    let request = Etcdserverpb_RangeRequest.with {
      $0.key = Data(key)
      if let rangeEnd { $0.rangeEnd = Data(rangeEnd) }
      $0.limit = Int64(limit)
    }
    let answer = try await call("Range") { client, options, metadata in
      try await Etcdserverpb_KV.Client(wrapping: client).range(
        request, metadata: metadata, options: options)
    }
    return (answer.kvs, answer.header.revision)
  }

  /// Every key that starts with `prefix`.
  public func range(prefix: [UInt8]) async throws(HeteroKVError)
    -> (kvs: [Etcdserverpb_KeyValue], revision: Int64)
  {
    try await range(prefix, end: Self.prefixEnd(prefix))
  }

  /// Sets `key` to `value`, attached to `lease` when non-zero.
  public func put(_ key: [UInt8], _ value: [UInt8], lease: Int64 = 0) async throws(HeteroKVError) {
    let request = Etcdserverpb_PutRequest.with {
      $0.key = Data(key)
      $0.value = Data(value)
      $0.lease = lease
    }
    _ = try await call("Put") { client, options, metadata in
      try await Etcdserverpb_KV.Client(wrapping: client).put(
        request, metadata: metadata, options: options)
    }
  }

  /// Deletes `[key, rangeEnd)` (just `key` when `rangeEnd` is nil); returns how many went.
  @discardableResult
  public func delete(_ key: [UInt8], end rangeEnd: [UInt8]? = nil) async throws(HeteroKVError)
    -> Int
  {
    let request = Etcdserverpb_DeleteRangeRequest.with {
      $0.key = Data(key)
      if let rangeEnd { $0.rangeEnd = Data(rangeEnd) }
    }
    let answer = try await call("DeleteRange") { client, options, metadata in
      try await Etcdserverpb_KV.Client(wrapping: client).deleteRange(
        request, metadata: metadata, options: options)
    }
    return Int(answer.deleted)
  }

  /// A transaction: if every comparison holds, `success` runs, else `failure`; atomically.
  public func txn(
    _ compare: [Etcdserverpb_Compare], success: [Etcdserverpb_RequestOp],
    failure: [Etcdserverpb_RequestOp] = []
  ) async throws(HeteroKVError) -> Etcdserverpb_TxnResponse {
    let request = Etcdserverpb_TxnRequest.with {
      $0.compare = compare
      $0.success = success
      $0.failure = failure
    }
    return try await call("Txn") { client, options, metadata in
      try await Etcdserverpb_KV.Client(wrapping: client).txn(
        request, metadata: metadata, options: options)
    }
  }

  // MARK: Leases

  /// Grants a lease of `ttl` seconds; returns its id.
  public func grantLease(ttl: Int) async throws(HeteroKVError) -> Int64 {
    let answer = try await call("LeaseGrant") { client, options, metadata in
      try await Etcdserverpb_Lease.Client(wrapping: client).leaseGrant(
        .with { $0.ttl = Int64(ttl) }, metadata: metadata, options: options)
    }
    guard answer.error.isEmpty else {
      throw HeteroKVError(.unavailable, "etcd LeaseGrant: \(answer.error)")
    }
    return answer.id
  }

  /// Revokes a lease: every key attached to it is deleted.
  public func revokeLease(_ id: Int64) async throws(HeteroKVError) {
    _ = try await call("LeaseRevoke") { client, options, metadata in
      try await Etcdserverpb_Lease.Client(wrapping: client).leaseRevoke(
        .with { $0.id = id }, metadata: metadata, options: options)
    }
  }

  /// Keeps lease `id` alive over one long-lived `LeaseKeepAlive` stream, renewing every
  /// `every`, reopening the stream (on the next member when one fails) until the lease is
  /// gone; returns when etcd says it expired (TTL 0) or throws when cancelled. `renewed` is
  /// told each renewal's TTL.
  public func keepAlive(
    _ id: Int64, every: Duration, renewed: @escaping @Sendable (Int64) -> Void = { _ in }
  ) async throws {
    while true {
      try Task.checkCancellation()
      let expired: Bool
      do {
        expired = try await call("LeaseKeepAlive") { client, _, metadata in
          try await Etcdserverpb_Lease.Client(wrapping: client).leaseKeepAlive(
            metadata: metadata,
            requestProducer: { writer in
              while !Task.isCancelled {
                try await writer.write(.with { $0.id = id })
                try await Task.sleep(for: every)
              }
            },
            onResponse: { response in
              for try await answer in response.messages {
                if answer.ttl <= 0 { return true }
                renewed(answer.ttl)
              }
              return false
            })
        }
      } catch {
        if Task.isCancelled { throw CancellationError() }
        try await Task.sleep(for: every)
        continue
      }
      if expired { return }
    }
  }

  // MARK: Watch

  /// Watches every key under `prefix` from `revision` (inclusive), calling `events` with each
  /// batch in order; when the stream breaks it is reopened from the revision after the last
  /// one delivered, so nothing is missed or seen twice. Runs until cancelled, or until
  /// `events` throws (that error is rethrown).
  public func watch(
    prefix: [UInt8], from revision: Int64,
    events: @escaping @Sendable ([Etcdserverpb_Event], Int64) async throws -> Void
  ) async throws {
    let next = Mutex(revision)
    while true {
      try Task.checkCancellation()
      do {
        try await call("Watch") { client, _, metadata in
          // From what was delivered so far, also when the call moves to another member.
          let start = next.withLock { $0 }
          let request = Etcdserverpb_WatchRequest.with {
            $0.createRequest = .with {
              $0.key = Data(prefix)
              $0.rangeEnd = Data(Self.prefixEnd(prefix))
              $0.startRevision = start
            }
          }
          return try await Etcdserverpb_Watch.Client(wrapping: client).watch(
            metadata: metadata,
            requestProducer: { writer in
              try await writer.write(request)
              // Keep the request side open for the stream's life.
              try await Task.sleep(for: .seconds(86_400 * 365))
            },
            onResponse: { response in
              for try await answer in response.messages {
                if answer.canceled {
                  throw RPCError(
                    code: .unavailable, message: "watch canceled: \(answer.cancelReason)")
                }
                guard !answer.events.isEmpty else { continue }
                let last = answer.events.map(\.kv.modRevision).max() ?? start
                do {
                  try await events(answer.events, answer.header.revision)
                } catch {
                  throw WatchHandlerFailure(error: error)
                }
                next.withLock { $0 = last + 1 }
              }
            })
        }
      } catch {
        if Task.isCancelled { throw CancellationError() }
        // The handler's own failure ends the watch; a broken stream is reopened.
        if let failure = error.cause as? WatchHandlerFailure { throw failure.error }
        try await Task.sleep(for: .milliseconds(200))
      }
    }
  }

  /// An error thrown by a watch's event handler, carried through the stream's error path.
  struct WatchHandlerFailure: Error {
    var error: any Error
  }

  /// The end of the range of keys that start with `prefix`.
  public static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
    var end = prefix
    while let last = end.last {
      if last < 0xff {
        end[end.count - 1] = last + 1
        return end
      }
      end.removeLast()
    }
    return [0]
  }
}

extension Etcdserverpb_RequestOp {
  /// A put in a transaction.
  public static func put(_ key: [UInt8], _ value: [UInt8], lease: Int64 = 0) -> Self {
    .with {
      $0.requestPut = .with {
        $0.key = Data(key)
        $0.value = Data(value)
        $0.lease = lease
      }
    }
  }

  /// A delete of `[key, end)` (just `key` when `end` is nil) in a transaction.
  public static func delete(_ key: [UInt8], end: [UInt8]? = nil) -> Self {
    .with {
      $0.requestDeleteRange = .with {
        $0.key = Data(key)
        if let end { $0.rangeEnd = Data(end) }
      }
    }
  }

  /// A read of `key` in a transaction.
  public static func get(_ key: [UInt8]) -> Self {
    .with { $0.requestRange = .with { $0.key = Data(key) } }
  }
}

extension Etcdserverpb_Compare {
  /// Holds when `key`'s create revision is `revision` (0: the key does not exist).
  public static func created(_ key: [UInt8], at revision: Int64) -> Self {
    .with {
      $0.key = Data(key)
      $0.target = .create
      $0.result = .equal
      $0.createRevision = revision
    }
  }
}
