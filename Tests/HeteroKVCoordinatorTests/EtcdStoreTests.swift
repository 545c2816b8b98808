import Foundation
import HeteroKVConfig
import HeteroKVCoordinator
import HeteroKVCore
import HeteroKVEtcd
import HeteroKVTestSupport
import Metrics
import Testing

@Suite("Coordinator state on a real etcd", .serialized)
struct EtcdStoreTests {
  func make(
    _ config: ClusterConfiguration, store: any CoordinatorStore, clock: ManualClock = ManualClock()
  ) throws -> Coordinator {
    try Coordinator(
      configuration: config, store: store, metricsFactory: NOOPMetricsHandler.instance,
      logger: quietLogger, now: { clock.now() })
  }

  func election(_ etcd: EtcdClient, _ id: String, ttl: Int = 2) -> EtcdLeaderElection {
    EtcdLeaderElection(
      client: etcd, key: Array("/hkv/test/leader".utf8), value: Array(id.utf8), ttl: ttl)
  }

  /// The restart test's history: nodes, sequences with profiles, a lapsed node, a close.
  func history(_ coordinator: Coordinator, clock: ManualClock) async throws {
    try await coordinator.addMemoryNodes(3)
    for s in 0..<3 {
      let key = SequenceKey(namespace: 2, sequence: UInt64(s))
      _ = try await coordinator.openSequence(key: key, worker: "w", maxTokens: 2048)
      _ = try await coordinator.reportProfiles(
        key: key, prefillTokens: 1024, profiles: testProfiles())
    }
    clock.advance(3)
    _ = await coordinator.heartbeat(id: "m0", incarnation: 1, usedBytes: 0)
    _ = await coordinator.heartbeat(id: "m1", incarnation: 1, usedBytes: 0)
    clock.advance(3)
    #expect(try await coordinator.expireLeases() == ["m2"])
    _ = try await coordinator.closeSequence(SequenceKey(namespace: 2, sequence: 1))
  }

  @Test(
    "an entry of its own that the leader took for failed (committed after a quorum came back) makes it step down and read the log again, applying it"
  )
  func orphanedOwnEntry() async throws {
    let config = try testCluster(replication: 2)
    try await withEtcd { etcd, _ in
      let leadership = try #require(try await election(etcd, "coord-1").attempt())
      let store = try await EtcdCoordinatorStore.open(
        client: etcd, prefix: "/hkv/test", leadership: leadership)
      let coordinator = try make(config, store: store)
      try await coordinator.addMemoryNodes(2)
      _ = try await coordinator.openSequence(
        key: SequenceKey(namespace: 0, sequence: 1), worker: "w", maxTokens: 1024)
      let revision = await coordinator.snapshot().revision
      // Another coordinator on the same state writes the next entry (as a write this leader
      // reported failed would land): this leader's state is now behind the log.
      let twin = try make(
        config,
        store: try await EtcdCoordinatorStore.open(
          client: etcd, prefix: "/hkv/test", leadership: leadership))
      _ = try await twin.openSequence(
        key: SequenceKey(namespace: 0, sequence: 2), worker: "w", maxTokens: 1024)
      await #expect(throws: HeteroKVError.self) {
        _ = try await coordinator.openSequence(
          key: SequenceKey(namespace: 0, sequence: 3), worker: "w", maxTokens: 1024)
      }
      #expect(!leadership.isHeld, "a leader behind its log keeps leading")
      // A new term reads the whole log, the orphaned entry included.
      await election(etcd, "coord-1").resign(leadership)
      let next = try #require(try await election(etcd, "coord-1").attempt())
      let reloaded = try make(
        config,
        store: try await EtcdCoordinatorStore.open(
          client: etcd, prefix: "/hkv/test", leadership: next))
      let state = await reloaded.snapshot()
      #expect(state.revision == revision + 1)
      #expect(state.sequences.keys.map(\.sequence).sorted() == [1, 2])
      _ = try await reloaded.openSequence(
        key: SequenceKey(namespace: 0, sequence: 3), worker: "w", maxTokens: 1024)
    }
  }

  @Test(
    "the state written to etcd (log and snapshots) reads back identical, and the log is compacted"
  )
  func roundTrip() async throws {
    let config = try testCluster(replication: 2)
    try await withEtcd { etcd, _ in
      let leadership = try #require(try await election(etcd, "coord-1").attempt())
      let clock = ManualClock()
      let store = try await EtcdCoordinatorStore.open(
        client: etcd, prefix: "/hkv/test", leadership: leadership, snapshotEvery: 4)
      let coordinator = try make(config, store: store, clock: clock)
      try await history(coordinator, clock: clock)
      let before = await coordinator.snapshot()
      #expect(before.revision == 11)

      let reopened = try await EtcdCoordinatorStore.open(
        client: etcd, prefix: "/hkv/test", leadership: leadership)
      let after = await (try make(config, store: reopened)).snapshot()
      #expect(after.sequences == before.sequences)
      #expect(after.revision == before.revision)
      #expect(
        after.membership.members.mapValues(\.status)
          == before.membership.members.mapValues(\.status))
      // Snapshots at revisions 4 and 8 removed the entries they hold: 3 remain.
      #expect(try await etcd.range(prefix: Array("/hkv/test/log/".utf8)).kvs.count == 3)
    }
  }

  @Test(
    "a standby leads within two leases of the leader's lease lapsing, on exactly what the leader acknowledged; the deposed leader's writes fail"
  )
  func takeover() async throws {
    let config = try testCluster(replication: 2)
    try await withEtcd { etcd, _ in
      let ttl = 2
      let first = try #require(try await election(etcd, "coord-a", ttl: ttl).attempt())
      #expect(try await election(etcd, "coord-b", ttl: ttl).attempt() == nil)
      let clock = ManualClock()
      let leader = try make(
        config,
        store: try await EtcdCoordinatorStore.open(
          client: etcd, prefix: "/hkv/test", leadership: first, snapshotEvery: 4),
        clock: clock)
      try await history(leader, clock: clock)
      let acknowledged = await leader.snapshot()

      let standby = Task { try await election(etcd, "coord-b", ttl: ttl).campaign() }
      // The leader stops renewing (as if it died); its lease lapses within the TTL.
      first.stopRenewing()
      let stopped = ContinuousClock.now
      let second = try await standby.value
      let waited = ContinuousClock.now - stopped
      #expect(waited < .seconds(2 * ttl), "took \(waited)")
      #expect(
        try await election(etcd, "coord-b").leader().map {
          String(decoding: $0.value, as: UTF8.self)
        }
          == "coord-b")

      let successor = try make(
        config,
        store: try await EtcdCoordinatorStore.open(
          client: etcd, prefix: "/hkv/test", leadership: second))
      let taken = await successor.snapshot()
      #expect(taken.sequences == acknowledged.sequences)
      #expect(taken.revision == acknowledged.revision)
      #expect(
        taken.membership.members.keys.sorted() == acknowledged.membership.members.keys.sorted())
      // The new leader writes; the old one cannot.
      let fresh = SequenceKey(namespace: 3, sequence: 1)
      _ = try await successor.openSequence(key: fresh, worker: "w2", maxTokens: 64)
      await expectRefusal(.unavailable, mentioning: "no longer the leader") {
        _ = try await leader.openSequence(
          key: SequenceKey(namespace: 3, sequence: 2), worker: "w", maxTokens: 64)
      }
      #expect(await leader.snapshot() == acknowledged)
      #expect(try await successor.closeSequence(fresh) > 0)
    }
  }

  @Test(
    "a standby follows the leader's state through a watch on the log (across snapshots), and a new leader opened on what it followed reads only the tail, or everything when the tail is gone"
  )
  func hotStandby() async throws {
    let config = try testCluster(replication: 2)
    try await withEtcd { etcd, _ in
      let leadership = try #require(try await election(etcd, "coord-a").attempt())
      let follower = EtcdStateFollower(client: etcd, prefix: "/hkv/test")
      follower.start()
      defer { follower.stop() }
      let clock = ManualClock()
      let leader = try make(
        config,
        store: try await EtcdCoordinatorStore.open(
          client: etcd, prefix: "/hkv/test", leadership: leadership, snapshotEvery: 4),
        clock: clock)
      try await history(leader, clock: clock)
      func caughtUp(_ revision: UInt64) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
          if follower.state?.revision == revision { return true }
          try await Task.sleep(for: .milliseconds(20))
        }
        return false
      }
      let acknowledged = await leader.snapshot()
      #expect(try await caughtUp(acknowledged.revision))
      #expect(follower.state?.sequences == acknowledged.sequences)
      // (Lease times are not state: heartbeats renew them without a change.)
      #expect(
        follower.state?.membership.members.mapValues(\.status)
          == acknowledged.membership.members.mapValues(\.status))
      #expect(
        follower.state?.membership.members.mapValues(\.incarnation)
          == acknowledged.membership.members.mapValues(\.incarnation))
      let stale = try #require(follower.state)
      follower.stop()
      // Five more changes: a snapshot compacts the entries after what the follower held.
      for s in 10..<15 {
        _ = try await leader.openSequence(
          key: SequenceKey(namespace: 5, sequence: UInt64(s)), worker: "w", maxTokens: 64)
      }
      let later = await leader.snapshot()
      let fromStale = try make(
        config,
        store: try await EtcdCoordinatorStore.open(
          client: etcd, prefix: "/hkv/test", leadership: leadership, following: stale))
      #expect(await fromStale.snapshot().sequences == later.sequences)
      #expect(await fromStale.snapshot().revision == later.revision)
      // Following again from scratch, then opening on it: the same state.
      let again = EtcdStateFollower(client: etcd, prefix: "/hkv/test")
      again.start()
      defer { again.stop() }
      let deadline = ContinuousClock.now + .seconds(10)
      while again.state?.revision != later.revision && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(20))
      }
      let reopened = try make(
        config,
        store: try await EtcdCoordinatorStore.open(
          client: etcd, prefix: "/hkv/test", leadership: leadership, following: again.state))
      #expect(await reopened.snapshot().sequences == later.sequences)
    }
  }
}
