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
/// Loading reads the snapshot and replays the log after it, refusing a gap. Standbys read
/// the same keys; a new leader opens its store after winning, on what the last leader
/// acknowledged.
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
  /// `leadership`.
  public static func open(
    client: EtcdClient, prefix: String, leadership: Leadership, snapshotEvery: Int = 1024
  ) async throws(HeteroKVError) -> EtcdCoordinatorStore {
    let (state, entries) = try await read(client: client, prefix: prefix)
    return EtcdCoordinatorStore(
      client: client, prefix: prefix, leadership: leadership,
      snapshotEvery: max(1, snapshotEvery), loaded: state, entries: entries)
  }

  /// The state under `prefix` (nil when nothing was ever stored), and the log entries after
  /// its snapshot; what a standby reads to stay current.
  public static func read(client: EtcdClient, prefix: String) async throws(HeteroKVError)
    -> (CoordinatorState?, Int)
  {
    var state: CoordinatorState?
    if let kv = try await client.range(Array((prefix + "/snapshot").utf8)).kvs.first {
      do {
        state = try JSONDecoder().decode(CoordinatorState.self, from: kv.value)
      } catch {
        throw HeteroKVError(.storageFailure, "etcd \(prefix)/snapshot cannot be read: \(error)")
      }
    }
    let log = try await client.range(prefix: Array((prefix + "/log/").utf8)).kvs
    var replayed = 0
    for kv in log {
      let entry: Entry
      do {
        entry = try JSONDecoder().decode(Entry.self, from: kv.value)
      } catch {
        throw HeteroKVError(
          .storageFailure,
          "etcd \(String(decoding: kv.key, as: UTF8.self)) cannot be decoded: \(error)")
      }
      var current = state ?? CoordinatorState(leaseSeconds: 1)
      if entry.revision <= current.revision { continue }
      guard entry.revision == current.revision + 1 else {
        throw HeteroKVError(
          .storageFailure,
          "etcd \(prefix)/log skips from revision \(current.revision) to \(entry.revision)")
      }
      current.apply(entry.change)
      state = current
      replayed += 1
    }
    return (state, replayed)
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
      // Retryable: the caller's next attempt finds the leader (this one, in a new term, or
      // another).
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
