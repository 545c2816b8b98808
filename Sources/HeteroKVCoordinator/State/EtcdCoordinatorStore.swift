import Foundation
import HeteroKVCore
import HeteroKVEtcd
import Synchronization

/// The coordinator's state in etcd, under one key prefix: an op-log of changes
/// (`<prefix>/log/<revision, 20 digits>`, JSON `{revision, change}`) and a snapshot
/// (`<prefix>/snapshot`, the state as JSON) that every `snapshotEvery` changes replaces the
/// log entries it holds. Every write is one etcd transaction that also compares the leader
/// key's create revision with the leadership this store was opened under (and, for a log
/// entry, that no entry of that revision exists), so a coordinator that lost leadership
/// cannot write at all: its transaction fails and the change is refused.
///
/// Loading reads the snapshot and replays the log after it, refusing a gap. Standbys keep the
/// same state current by watching the log (``EtcdStateFollower``); a new leader then reads
/// only the entries after what it followed, on what the last leader acknowledged.
public final class EtcdCoordinatorStore: CoordinatorStore {
  private struct Entry: Codable {
    var revision: UInt64
    var change: StateChange
  }

  public let client: EtcdClient
  /// The key prefix, e.g. `/heterokv/<cluster>`.
  public let prefix: String
  /// The leadership every write is guarded by.
  public let leadership: Leadership
  /// Log entries after which a snapshot is written and the log compacted.
  public let snapshotEvery: Int
  private let loaded: CoordinatorState?
  private let sinceSnapshot = Mutex(0)

  private init(
    client: EtcdClient, prefix: String, leadership: Leadership, snapshotEvery: Int,
    loaded: CoordinatorState?, entries: Int
  ) {
    self.client = client
    self.prefix = prefix
    self.leadership = leadership
    self.snapshotEvery = snapshotEvery
    self.loaded = loaded
    sinceSnapshot.withLock { $0 = entries }
  }

  /// Reads the state under `prefix` and returns a store whose writes are guarded by
  /// `leadership`. A standby that kept `following` current (``EtcdStateFollower``) reads only
  /// the log entries after it; when snapshots compacted past them, everything.
  public static func open(
    client: EtcdClient, prefix: String, leadership: Leadership, snapshotEvery: Int = 1024,
    following: CoordinatorState? = nil
  ) async throws(HeteroKVError) -> EtcdCoordinatorStore {
    var read: (state: CoordinatorState?, entries: Int)?
    if let following {
      read = try await tail(client: client, prefix: prefix, after: following)
    }
    if read == nil {
      let full = try await Self.read(client: client, prefix: prefix)
      read = (full.state, full.entries)
    }
    return EtcdCoordinatorStore(
      client: client, prefix: prefix, leadership: leadership,
      snapshotEvery: max(1, snapshotEvery), loaded: read!.state, entries: read!.entries)
  }

  /// The state under `prefix` (nil when nothing was ever stored), the log entries after its
  /// snapshot, and the etcd revision it was read at (a watch from the next one misses
  /// nothing).
  public static func read(client: EtcdClient, prefix: String) async throws(HeteroKVError)
    -> (state: CoordinatorState?, entries: Int, etcdRevision: Int64)
  {
    var state: CoordinatorState?
    if let kv = try await client.range(Array((prefix + "/snapshot").utf8)).kvs.first {
      do {
        state = try JSONDecoder().decode(CoordinatorState.self, from: kv.value)
      } catch {
        throw HeteroKVError(.storageFailure, "etcd \(prefix)/snapshot cannot be read: \(error)")
      }
    }
    let (log, revision) = try await client.range(prefix: Array((prefix + "/log/").utf8))
    var replayed = 0
    for kv in log {
      let before = state?.revision ?? 0
      guard let next = try follow(kv, onto: state) else {
        throw HeteroKVError(
          .storageFailure,
          "etcd \(prefix)/log skips from revision \(before) past the entry at "
            + String(decoding: kv.key, as: UTF8.self))
      }
      if next.revision > before { replayed += 1 }
      state = next
    }
    return (state, replayed, revision)
  }

  /// `state` brought up to date from the log entries after it, or nil when the log no
  /// longer holds the next one (a snapshot compacted it): read everything then.
  static func tail(client: EtcdClient, prefix: String, after state: CoordinatorState)
    async throws(HeteroKVError) -> (state: CoordinatorState?, entries: Int)?
  {
    let start = Array((prefix + "/log/" + logName(state.revision + 1)).utf8)
    let end = EtcdClient.prefixEnd(Array((prefix + "/log/").utf8))
    let log = try await client.range(start, end: end).kvs
    var current = state
    for kv in log {
      guard let next = try follow(kv, onto: current), next.revision == current.revision + 1
      else { return nil }
      current = next
    }
    // Entries before `state`'s next may be gone and a snapshot newer: only trust the tail
    // when the log still starts at or before it.
    let first = try await client.range(
      Array((prefix + "/log/").utf8), end: end, limit: 1
    ).kvs.first
    if let first, try decode(first).revision > state.revision + 1 { return nil }
    if first == nil,
      let snapshot = try await client.range(Array((prefix + "/snapshot").utf8)).kvs.first,
      (try? JSONDecoder().decode(CoordinatorState.self, from: snapshot.value))?.revision
        ?? 0 > state.revision
    {
      return nil
    }
    return (current, log.count)
  }

  private static func decode(_ kv: Etcdserverpb_KeyValue) throws(HeteroKVError) -> Entry {
    do {
      return try JSONDecoder().decode(Entry.self, from: kv.value)
    } catch {
      throw HeteroKVError(
        .storageFailure,
        "etcd \(String(decoding: kv.key, as: UTF8.self)) cannot be decoded: \(error)")
    }
  }

  /// Applies one log entry to `state` (the one step of loading, catching up and following):
  /// the next state (or `state` itself for an entry it holds already), or nil when entries
  /// before it are missing.
  static func follow(_ kv: Etcdserverpb_KeyValue, onto state: CoordinatorState?)
    throws(HeteroKVError) -> CoordinatorState?
  {
    let entry = try decode(kv)
    var current = state ?? CoordinatorState(leaseSeconds: 1)
    if entry.revision <= current.revision { return current }
    guard entry.revision == current.revision + 1 else { return nil }
    current.apply(entry.change)
    return current
  }

  public func load() throws(HeteroKVError) -> CoordinatorState? { loaded }

  public func append(_ change: StateChange, state: CoordinatorState) async throws(HeteroKVError) {
    let payload: Data
    do {
      payload = try JSONEncoder().encode(Entry(revision: state.revision, change: change))
    } catch {
      throw HeteroKVError(.storageFailure, "cannot encode a state change: \(error)")
    }
    let key = Array((prefix + "/log/" + Self.logName(state.revision)).utf8)
    let answer = try await client.txn(
      [leadership.guardComparison, .created(key, at: 0)],
      success: [.put(key, Array(payload))])
    // A refused compare may be this very write, applied by a member that died before it
    // answered and retried on another: the entry is then there with these bytes.
    let mine: Bool
    if answer.succeeded {
      mine = true
    } else if let held = try await client.range(key).kvs.first {
      mine = held.value == payload && leadership.isHeld
    } else {
      mine = false
    }
    guard mine else {
      // Either deposed, or the log holds an entry this state lacks: under an unchanged leader
      // key only this leader writes, so it is one of its own writes reported failed and
      // committed later (a quorum lost mid-write, then restored). Both ways this replica must
      // stop leading and read the log again: it abandons leadership, steps down, campaigns
      // anew and loads the whole log. Retryable: the caller's next attempt finds the leader
      // (this one, in a new term, or another).
      leadership.abandon()
      throw HeteroKVError(
        .unavailable,
        "this coordinator is no longer the leader (the leader key under \(prefix) changed, or "
          + "revision \(state.revision) was written by another): change refused")
    }
    let due = sinceSnapshot.withLock { count -> Bool in
      count += 1
      return count >= snapshotEvery
    }
    guard due else { return }
    // The entry is durable: a failed snapshot leaves the log as it is, tried again next time.
    do {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.sortedKeys]
      let snapshot = try encoder.encode(state)
      let logStart = Array((prefix + "/log/").utf8)
      let logEnd = Array((prefix + "/log/" + Self.logName(state.revision + 1)).utf8)
      let written = try await client.txn(
        [leadership.guardComparison],
        success: [
          .put(Array((prefix + "/snapshot").utf8), Array(snapshot)),
          .delete(logStart, end: logEnd),
        ])
      if written.succeeded { sinceSnapshot.withLock { $0 = 0 } }
    } catch {}
  }

  /// A log key's revision part: zero-padded, so key order is revision order.
  static func logName(_ revision: UInt64) -> String {
    let digits = String(revision)
    return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
  }
}

/// A standby's copy of the coordinator's state, kept current by a watch on the log: read
/// once, then each new entry applied in order; a gap (entries compacted into a snapshot while
/// the watch was away) reads everything again.
public final class EtcdStateFollower: Sendable {
  public let client: EtcdClient
  public let prefix: String
  private let current = Mutex<CoordinatorState?>(nil)
  private let task = Mutex<Task<Void, Never>?>(nil)

  public init(client: EtcdClient, prefix: String) {
    self.client = client
    self.prefix = prefix
  }

  /// The state as last followed (nil before the first read, or when nothing is stored).
  public var state: CoordinatorState? { current.withLock { $0 } }

  /// Starts following (once).
  public func start() {
    task.withLock { running in
      guard running == nil else { return }
      running = Task { [weak self] in
        while !Task.isCancelled {
          guard let self else { return }
          do {
            let read = try await EtcdCoordinatorStore.read(client: self.client, prefix: self.prefix)
            self.current.withLock { $0 = read.state }
            try await self.client.watch(
              prefix: Array((self.prefix + "/log/").utf8), from: read.etcdRevision + 1
            ) { events, _ in
              for event in events where event.type == .put {
                let gap = self.current.withLock { state -> Bool in
                  // An entry that cannot be read counts as a gap: read everything again.
                  guard let next = try? EtcdCoordinatorStore.follow(event.kv, onto: state) else {
                    return true
                  }
                  state = next
                  return false
                }
                // Entries went missing: read everything again.
                if gap { throw CancellationError() }
              }
            }
          } catch {
            if Task.isCancelled { return }
            try? await Task.sleep(for: .milliseconds(200))
          }
        }
      }
    }
  }

  /// Stops following.
  public func stop() {
    let running = task.withLock { t -> Task<Void, Never>? in
      defer { t = nil }
      return t
    }
    running?.cancel()
  }
}
