import Foundation
import HeteroKVCore
import Synchronization

/// Leadership won in an ``EtcdLeaderElection``: the lease that holds the leader key, and the
/// key's create revision, which every write of the leader compares against so that a deposed
/// leader's writes fail instead of splitting the brain.
public final class Leadership: Sendable {
  /// The leader key.
  public let key: [UInt8]
  /// The lease the key is attached to.
  public let lease: Int64
  /// The key's create revision: it changes whenever another campaign wins.
  public let createRevision: Int64
  /// The lease's TTL: leadership counts as lost once no renewal arrived for this long.
  public let ttl: Duration
  private let state = Mutex<
    (lost: Bool, keeper: Task<Void, Never>?, renewed: ContinuousClock.Instant)
  >(
    (false, nil, .now))

  init(key: [UInt8], lease: Int64, createRevision: Int64, ttl: Duration) {
    self.key = key
    self.lease = lease
    self.createRevision = createRevision
    self.ttl = ttl
  }

  /// False once the lease expired or was revoked, or no renewal reached etcd for a whole TTL
  /// (a leader cut off from etcd steps down by itself: its lease is lapsing there too).
  public var isHeld: Bool {
    state.withLock { !$0.lost && ContinuousClock.now - $0.renewed < ttl }
  }

  func noteRenewed() { state.withLock { $0.renewed = .now } }

  /// The comparison a leader's transaction carries: the leader key is still this one.
  public var guardComparison: Etcdserverpb_Compare { .created(key, at: createRevision) }

  func start(_ keeper: Task<Void, Never>) { state.withLock { $0.keeper = keeper } }

  func markLost() { state.withLock { $0.lost = true } }

  /// Gives leadership up on this side at once: `isHeld` turns false and renewals stop, so the
  /// replica steps down (and resigns) at its next check.
  public func abandon() {
    stopRenewing()
    markLost()
  }

  /// Stops renewing (the lease then lapses within its TTL).
  public func stopRenewing() {
    let keeper = state.withLock { $0.keeper }
    keeper?.cancel()
  }
}

/// Leader election on etcd: a lease of `ttl` seconds and a create-if-absent transaction on
/// one key whose value names the candidate. The winner keeps its lease alive; when it dies
/// or is cut off, the lease lapses, etcd deletes the key, and a waiting candidate wins.
public struct EtcdLeaderElection: Sendable {
  public let client: EtcdClient
  /// The leader key, e.g. `/heterokv/<cluster>/leader`.
  public let key: [UInt8]
  /// What the key holds while this candidate leads (its id and address, for redirects).
  public let value: [UInt8]
  /// Lease TTL in seconds.
  public let ttl: Int

  public init(client: EtcdClient, key: [UInt8], value: [UInt8], ttl: Int) {
    self.client = client
    self.key = key
    self.value = value
    self.ttl = max(1, ttl)
  }

  /// The current leader's value and the key's create revision, or nil when none leads.
  public func leader() async throws(HeteroKVError) -> (value: [UInt8], createRevision: Int64)? {
    guard let kv = try await client.range(key).kvs.first else { return nil }
    return (Array(kv.value), kv.createRevision)
  }

  /// Campaigns until this candidate leads; returns its leadership, already renewing. Between
  /// attempts it polls the key every third of the TTL, so it leads within one TTL (plus a
  /// poll) of the previous leader's lease lapsing.
  public func campaign() async throws -> Leadership {
    while true {
      try Task.checkCancellation()
      if let won = try await attempt() { return won }
      try await Task.sleep(for: .milliseconds(Int64(max(100, ttl * 1000 / 3))))
    }
  }

  /// One attempt: the leadership when the key was free, else nil.
  public func attempt() async throws(HeteroKVError) -> Leadership? {
    let lease = try await client.grantLease(ttl: ttl)
    let answer = try await client.txn(
      [.created(key, at: 0)], success: [.put(key, value, lease: lease)], failure: [])
    guard answer.succeeded else {
      try? await client.revokeLease(lease)
      // This candidate's own key from an earlier term (it restarted, or lost touch with etcd
      // while its lease lived on): give it up so the next attempt can win at once.
      if let held = try? await client.range(key).kvs.first, Array(held.value) == value,
        held.lease != 0
      {
        try? await client.revokeLease(held.lease)
      }
      return nil
    }
    // The put was the transaction's only write: the key was created at its revision.
    let leadership = Leadership(
      key: key, lease: lease, createRevision: answer.header.revision, ttl: .seconds(ttl))
    let client = self.client
    let every = Duration.milliseconds(Int64(max(100, ttl * 1000 / 3)))
    leadership.start(
      Task {
        do {
          try await client.keepAlive(lease, every: every) { _ in leadership.noteRenewed() }
        } catch {}
        leadership.markLost()
      })
    return leadership
  }

  /// Gives leadership up at once (the key goes with the lease).
  public func resign(_ leadership: Leadership) async {
    leadership.stopRenewing()
    leadership.markLost()
    try? await client.revokeLease(leadership.lease)
  }
}
