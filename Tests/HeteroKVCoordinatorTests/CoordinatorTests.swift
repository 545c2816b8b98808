import Foundation
import HeteroKVConfig
import HeteroKVCore
import Metrics
import HeteroKVTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@testable import HeteroKVCoordinator

@Suite("Coordinator")
struct CoordinatorTests {
  func make(
    _ config: ClusterConfiguration, store: any CoordinatorStore = InMemoryCoordinatorStore(),
    clock: ManualClock = ManualClock()
  ) throws -> Coordinator {
    try Coordinator(
      configuration: config, store: store, metricsFactory: NOOPMetricsHandler.instance,
      logger: quietLogger, now: { clock.now() })
  }

  @Test(
    "a lapsed lease marks the node down within one lease period, and placements drop it with a new version"
  )
  func leaseExpiry() async throws {
    let clock = ManualClock()
    let coordinator = try make(testCluster(replication: 2, lease: 5), clock: clock)
    try await coordinator.addMemoryNodes(3)
    let key = SequenceKey(namespace: 1, sequence: 42)
    let opened = try await coordinator.openSequence(key: key, worker: "w0", maxTokens: 1000)
    #expect(opened.placement.version == 1)
    #expect(opened.placement.targets.map(\.nodeID) == ["m0", "m1", "m2"])
    #expect(opened.placement.replicas == 2)
    // m0 and m2 renew; m1 stops.
    for _ in 0..<3 {
      clock.advance(2)
      for id in ["m0", "m2"] {
        let (accepted, _) = await coordinator.heartbeat(id: id, incarnation: 1, usedBytes: 10)
        #expect(accepted)
      }
      try await coordinator.expireLeases()
    }
    // 6 s after its last renewal (lease 5 s): down.
    let members = try await coordinator.members()
    #expect(members.first { $0.member.id == "m1" }?.member.status == .down)
    #expect(members.filter { $0.member.status == .up }.map(\.member.id) == ["m0", "m2"])
    let placement = try await coordinator.sequence(key).placement
    #expect(placement.version == 2)
    #expect(placement.targets.map(\.nodeID) == ["m0", "m2"])
    #expect(placement.departed == ["m1"])
    // The lapsed member's heartbeat is refused; it must register again.
    let (accepted, reason) = await coordinator.heartbeat(id: "m1", incarnation: 1, usedBytes: 0)
    #expect(!accepted)
    #expect(reason.contains("lapsed"))
  }

  @Test(
    "a memory node that registers again (it restarted, its memory is gone) leaves existing placements"
  )
  func rejoin() async throws {
    let coordinator = try make(testCluster())
    try await coordinator.addMemoryNodes(2)
    let key = SequenceKey(namespace: 0, sequence: 1)
    _ = try await coordinator.openSequence(key: key, worker: "w", maxTokens: 100)
    _ = try await coordinator.register(
      id: "m1", role: .memoryNode, dataAddress: "127.0.0.1:1", controlAddress: "127.0.0.1:2",
      capacityBytes: 1 << 30, transport: "tcp")
    let placement = try await coordinator.sequence(key).placement
    #expect(placement.targets.map(\.nodeID) == ["m0"])
    #expect(placement.version == 2)
    // A new sequence places on both again.
    let next = try await coordinator.openSequence(
      key: SequenceKey(namespace: 0, sequence: 2), worker: "w", maxTokens: 100)
    #expect(next.placement.targets.count == 2)
  }

  @Test(
    "opening is idempotent for the same worker; a second worker, a missing sequence and a full pool are refused clearly"
  )
  func refusals() async throws {
    let coordinator = try make(testCluster(replication: 2))
    let key = SequenceKey(namespace: 0, sequence: 9)
    await #expect(throws: HeteroKVError.self) {
      try await coordinator.openSequence(key: key, worker: "w", maxTokens: 10)
    }
    try await coordinator.addMemoryNodes(2, capacity: 64 << 20)
    let a = try await coordinator.openSequence(key: key, worker: "w", maxTokens: 1000)
    let b = try await coordinator.openSequence(key: key, worker: "w", maxTokens: 1000)
    #expect(a == b)
    await expectRefusal(.alreadyExists, mentioning: "by worker w") {
      _ = try await coordinator.openSequence(key: key, worker: "other", maxTokens: 1000)
    }
    await expectRefusal(.notFound, mentioning: "0/10") {
      _ = try await coordinator.sequence(SequenceKey(namespace: 0, sequence: 10))
    }
    // 2 layers x 4 heads x 64 dims x 2 bytes x (K+V) = 2 KiB per token, x2 copies: 128 MiB
    // of pool holds 32K tokens.
    await expectRefusal(.resourceExhausted, mentioning: "free") {
      _ = try await coordinator.openSequence(
        key: SequenceKey(namespace: 0, sequence: 11), worker: "w", maxTokens: 40_000)
    }
  }

  @Test(
    "a tenant's quota bounds what its namespaces reserve across the pool; other namespaces and closed sequences are not counted"
  )
  func tenantQuota() async throws {
    var config = try testCluster()
    // 2 KiB per token (one copy); 4 MiB per node x 2 nodes = 8 MiB: 4,096 tokens.
    config.security = SecuritySettings(
      tokenEnvironmentVariable: "HKV_TEST_TOKEN",
      tenants: [
        TenantSettings(
          name: "alpha", tokenEnvironmentVariable: "HKV_ALPHA", namespaces: [7, 8],
          quotaBytes: 4 << 20)
      ])
    let coordinator = try make(config)
    try await coordinator.addMemoryNodes(2, capacity: 1 << 30)
    let first = SequenceKey(namespace: 7, sequence: 1)
    _ = try await coordinator.openSequence(key: first, worker: "w", maxTokens: 3000)
    // Namespace 8 belongs to the same tenant: 3,000 + 2,000 tokens pass its 4,096.
    await expectRefusal(.resourceExhausted, mentioning: "tenant \"alpha\"") {
      _ = try await coordinator.openSequence(
        key: SequenceKey(namespace: 8, sequence: 2), worker: "w", maxTokens: 2000)
    }
    #expect(try await coordinator.status().sequences.count == 1)
    // A namespace no quota covers is bound only by the pool.
    _ = try await coordinator.openSequence(
      key: SequenceKey(namespace: 9, sequence: 3), worker: "w", maxTokens: 100_000)
    _ = try await coordinator.openSequence(
      key: SequenceKey(namespace: 8, sequence: 4), worker: "w", maxTokens: 1000)
    // Closing frees the tenant's share.
    _ = try await coordinator.closeSequence(first)
    _ = try await coordinator.openSequence(
      key: SequenceKey(namespace: 8, sequence: 2), worker: "w", maxTokens: 2000)
  }

  @Test("reported profiles give budgets readable per sequence; bad reports name the head")
  func profiles() async throws {
    let coordinator = try make(testCluster())
    try await coordinator.addMemoryNodes(1)
    let key = SequenceKey(namespace: 0, sequence: 5)
    let opened = try await coordinator.openSequence(key: key, worker: "w", maxTokens: 8192)
    let record = try await coordinator.reportProfiles(
      key: key, prefillTokens: 4096, profiles: testProfiles().reversed())
    let plan = try #require(record.budgets)
    #expect(plan.heads.map(\.layer) == [0, 0, 0, 0, 1, 1, 1, 1])
    #expect(
      plan.heads.filter { !$0.role.keepsFullContext }.map(\.cap).reduce(0, +) == plan.totalTokens)
    // Anchors' keys no longer need the memory tier: the reservation shrinks.
    #expect(record.reservedBytes < opened.reservedBytes)
    var bad = testProfiles()
    bad[5].role = .satellite(pivot: 2)
    await #expect {
      try await coordinator.reportProfiles(key: key, prefillTokens: 10, profiles: bad)
    } throws: { error in
      "\(error)".contains("layer 1 head 1") && "\(error)".contains("not a pivot")
    }
    await #expect(throws: HeteroKVError.self) {
      try await coordinator.reportProfiles(
        key: key, prefillTokens: 10, profiles: Array(testProfiles().dropLast()))
    }
    await #expect(throws: HeteroKVError.self) {
      try await coordinator.reportProfiles(key: key, prefillTokens: 9000, profiles: testProfiles())
    }
    #expect(try await coordinator.closeSequence(key) == record.reservedBytes)
    #expect(try await coordinator.status().reservedBytes == 0)
  }

  @Test("state in a file store comes back identical after a restart, leases renewed for one period")
  func restart() async throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = try testCluster(replication: 2, stateDir: dir)
    var before: CoordinatorState
    do {
      let store = try FileCoordinatorStore(directory: dir, snapshotEvery: 4)
      let clock = ManualClock()
      let coordinator = try make(config, store: store, clock: clock)
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
      before = await coordinator.snapshot()
    }
    // A second coordinator on the same directory is refused while the first holds it: here
    // the first is gone (its store was released), so this one opens.
    let store = try FileCoordinatorStore(directory: dir, snapshotEvery: 4)
    #expect(throws: HeteroKVError.self) { try FileCoordinatorStore(directory: dir) }
    let restored = try make(config, store: store)
    let after = await restored.snapshot()
    #expect(after.sequences == before.sequences)
    #expect(after.revision == before.revision)
    #expect(
      after.membership.members.mapValues(\.status) == before.membership.members.mapValues(\.status))
    #expect(
      after.membership.members.mapValues(\.incarnation)
        == before.membership.members.mapValues(\.incarnation))
  }

  @Test(
    "a worker whose lease lapses loses its sequences: reservations freed, rows queued for every node that holds them, kept across a restart until each node has dropped them"
  )
  func workerLeaseLapse() async throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = try testCluster(replication: 2, lease: 5, stateDir: dir)
    let clock = ManualClock()
    let orphans = (0..<3).map { SequenceKey(namespace: 0, sequence: UInt64($0)) }
    let kept = SequenceKey(namespace: 0, sequence: 9)
    do {
      let coordinator = try make(
        config, store: try FileCoordinatorStore(directory: dir), clock: clock)
      try await coordinator.addMemoryNodes(3)
      for id in ["w-dead", "w-alive"] {
        _ = try await coordinator.register(
          id: id, role: .worker, dataAddress: "", controlAddress: "127.0.0.1:7300",
          capacityBytes: 0, transport: "tcp")
      }
      for key in orphans {
        _ = try await coordinator.openSequence(key: key, worker: "w-dead", maxTokens: 1000)
      }
      _ = try await coordinator.openSequence(key: kept, worker: "w-alive", maxTokens: 1000)
      let keptBytes = try await coordinator.sequence(kept).reservedBytes
      // Everyone but w-dead renews; after one lease it lapses.
      clock.advance(4)
      for id in ["m0", "m1", "m2", "w-alive"] {
        #expect(await coordinator.heartbeat(id: id, incarnation: 1, usedBytes: 0).0)
      }
      clock.advance(2)
      #expect(try await coordinator.expireLeases() == ["w-dead"])
      let status = try await coordinator.status()
      #expect(status.sequences.map(\.key) == [kept])
      #expect(status.reservedBytes == keptBytes)
      #expect(status.sequencesAwaitingDrop == 3)
      let drops = try await coordinator.pendingDrops()
      #expect(drops.count == 9)
      #expect(Set(drops.map(\.key)) == Set(orphans))
      #expect(
        Set(drops.map(\.controlAddress)) == ["127.0.0.1:7200", "127.0.0.1:7201", "127.0.0.1:7202"])
      // The key cannot be opened again while its old rows are being dropped.
      await expectRefusal(.unavailable, mentioning: "still being dropped") {
        _ = try await coordinator.openSequence(key: orphans[2], worker: "w-alive", maxTokens: 64)
      }
      try await coordinator.rowsDropped(orphans[0], nodes: ["m0", "m1", "m2"])
      try await coordinator.rowsDropped(orphans[1], nodes: ["m0"])
      #expect(try await coordinator.status().sequencesAwaitingDrop == 2)
    }
    // A restart keeps what is still to be dropped.
    let coordinator = try make(
      config, store: try FileCoordinatorStore(directory: dir), clock: clock)
    let drops = try await coordinator.pendingDrops()
    #expect(drops.count == 5)
    #expect(!drops.contains { $0.key == orphans[1] && $0.nodeID == "m0" })
    // A node that goes down holds nothing more to drop.
    clock.advance(4)
    for id in ["m0", "m2", "w-alive"] {
      #expect(await coordinator.heartbeat(id: id, incarnation: 1, usedBytes: 0).0)
    }
    clock.advance(2)
    #expect(try await coordinator.expireLeases() == ["m1"])
    #expect(try await coordinator.pendingDrops().allSatisfy { $0.nodeID != "m1" })
    // A worker that registers again restarted: its sequences are closed too.
    _ = try await coordinator.register(
      id: "w-alive", role: .worker, dataAddress: "", controlAddress: "127.0.0.1:7300",
      capacityBytes: 0, transport: "tcp")
    #expect(try await coordinator.status().sequences.isEmpty)
    #expect(try await coordinator.status().reservedBytes == 0)
  }

  @Test(
    "a coordinator whose store fails a write answers an error and changes nothing; after restart its state is exactly what it acknowledged"
  )
  func injectedStoreFailure() async throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = try testCluster(replication: 1, stateDir: dir)
    let acknowledged: CoordinatorState
    do {
      // Writes 1 and 2 register the nodes; the 3rd (the first open) is torn.
      let faults = InjectedFaults(writes: [3])
      let coordinator = try make(
        config, store: try FileCoordinatorStore(directory: dir, operations: faults.operations))
      try await coordinator.addMemoryNodes(2)
      let refused = SequenceKey(namespace: 0, sequence: 1)
      await expectRefusal(.storageFailure, mentioning: "state.log") {
        _ = try await coordinator.openSequence(key: refused, worker: "w", maxTokens: 64)
      }
      await #expect(throws: HeteroKVError.self) { try await coordinator.sequence(refused) }
      _ = try await coordinator.openSequence(
        key: SequenceKey(namespace: 0, sequence: 2), worker: "w", maxTokens: 64)
      acknowledged = await coordinator.snapshot()
      #expect(acknowledged.revision == 3)
    }
    let restarted = try make(config, store: try FileCoordinatorStore(directory: dir))
    let after = await restarted.snapshot()
    #expect(after.revision == acknowledged.revision)
    #expect(after.sequences == acknowledged.sequences)
    #expect(after.sequences.keys.map(\.sequence) == [2])
  }

  @Test(
    "hostile registrations (capacity 2^63 twice, a bogus data address, a 1 MiB id) are refused, and the coordinator restarts fine"
  )
  func hostileInputs() async throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = try testCluster(replication: 1, stateDir: dir)
    do {
      let coordinator = try make(config, store: try FileCoordinatorStore(directory: dir))
      for id in ["big-0", "big-1"] {
        await expectRefusal(.invalidArgument, mentioning: "capacity_bytes") {
          _ = try await coordinator.register(
            id: id, role: .memoryNode, dataAddress: "127.0.0.1:7100",
            controlAddress: "127.0.0.1:7200", capacityBytes: 1 << 63, transport: "tcp")
        }
      }
      await expectRefusal(.invalidArgument, mentioning: "data_address") {
        _ = try await coordinator.register(
          id: "bogus", role: .memoryNode, dataAddress: "not an address",
          controlAddress: "127.0.0.1:7200", capacityBytes: 1 << 30, transport: "tcp")
      }
      let huge = String(repeating: "w", count: 1 << 20)
      await expectRefusal(.invalidArgument, mentioning: "member_id") {
        _ = try await coordinator.register(
          id: huge, role: .worker, dataAddress: "", controlAddress: "", capacityBytes: 0,
          transport: "tcp")
      }
      try await coordinator.addMemoryNodes(2)
      await expectRefusal(.invalidArgument, mentioning: "worker_id") {
        _ = try await coordinator.openSequence(
          key: SequenceKey(namespace: 0, sequence: 1), worker: huge, maxTokens: 16)
      }
      // Nothing refused is in the state; every later call still works.
      let status = try await coordinator.status()
      #expect(status.nodesUp == 2)
      #expect(status.capacityBytes == 2 << 30)
      _ = try await coordinator.openSequence(
        key: SequenceKey(namespace: 0, sequence: 2), worker: "w", maxTokens: 16)
    }
    let restarted = try make(config, store: try FileCoordinatorStore(directory: dir))
    let status = try await restarted.status()
    #expect(status.sequences.count == 1)
    #expect(Set((await restarted.snapshot()).membership.members.keys) == ["m0", "m1"])
  }
}

/// Expects `body` to fail with a coordinator refusal of `kind` whose message has `text`.
func expectRefusal(
  _ kind: HeteroKVError.Code, mentioning text: String,
  sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> Void
) async {
  do {
    try await body()
    Issue.record("expected a \(kind) refusal", sourceLocation: sourceLocation)
  } catch {
    let refusal = error as? HeteroKVError
    #expect(refusal?.code == kind, "\(error)", sourceLocation: sourceLocation)
    #expect(refusal?.message.contains(text) == true, "\(error)", sourceLocation: sourceLocation)
  }
}

@Suite("File store")
struct FileStoreTests {
  func changes(_ count: Int) -> [StateChange] {
    (0..<count).map { i in
      .registered(
        MembershipTable.Member(
          id: "m\(i % 3)", role: .memoryNode, dataAddress: "h:\(i)", controlAddress: "h:1",
          capacityBytes: UInt64(i + 1), transport: "tcp", leaseExpiresAt: 0, status: .up,
          incarnation: UInt64(i / 3 + 1)))
    }
  }

  func write(_ changes: [StateChange], to dir: String, snapshotEvery: Int) throws
    -> CoordinatorState
  {
    let store = try FileCoordinatorStore(directory: dir, snapshotEvery: snapshotEvery)
    var state = try store.load() ?? CoordinatorState(leaseSeconds: 1)
    for change in changes {
      state.apply(change)
      try store.append(change, state: state)
    }
    return state
  }

  @Test("replay of snapshot plus log gives the same state, at every snapshot interval")
  func replay() throws {
    for every in [1, 3, 7, 100] {
      let dir = temporaryDirectory()
      defer { try? FileManager.default.removeItem(atPath: dir) }
      let written = try write(changes(20), to: dir, snapshotEvery: every)
      let loaded = try FileCoordinatorStore(directory: dir).load()
      #expect(loaded == written, "snapshot every \(every)")
      #expect(loaded?.revision == 20)
    }
  }

  @Test("a torn last record is cut; damage before the end refuses to load")
  func damage() throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let written = try write(changes(5), to: dir, snapshotEvery: 100)
    let log = dir + "/state.log"
    var bytes = try Data(contentsOf: URL(fileURLWithPath: log))
    let full = bytes.count
    // Torn tail: half of a sixth record.
    try (bytes + Data([40, 0, 0, 0, 1, 2, 3])).write(to: URL(fileURLWithPath: log))
    var next = written
    do {
      let store = try FileCoordinatorStore(directory: dir, snapshotEvery: 100)
      #expect(try store.load() == written)
      #expect(try Data(contentsOf: URL(fileURLWithPath: log)).count == full)
      // It appends cleanly after the cut.
      let change = changes(6)[5]
      next.apply(change)
      try store.append(change, state: next)
    }
    #expect(try FileCoordinatorStore.loadOnce(dir) == next)
    // Flip a byte inside the first record's payload: refused, naming the offset.
    bytes = try Data(contentsOf: URL(fileURLWithPath: log))
    bytes[12] ^= 0xff
    try bytes.write(to: URL(fileURLWithPath: log))
    #expect {
      try FileCoordinatorStore.loadOnce(dir)
    } throws: { error in
      "\(error)".contains("damaged at byte 0")
    }
  }
}

extension FileCoordinatorStore {
  /// What `store`'s directory holds now, read while it stays open.
  static func loadOnceSharing(_ store: FileCoordinatorStore) throws -> CoordinatorState? {
    try store.load()
  }

  /// Opens, loads and releases the directory.
  static func loadOnce(_ dir: String) throws -> CoordinatorState? {
    try FileCoordinatorStore(directory: dir).load()
  }
}

/// Faults injected into the file store's writes and syncs by call number (1-based): a
/// failing write stores half of its bytes, then fails with EIO, as a full disk would.
final class InjectedFaults: Sendable {
  private struct Counts {
    var writes = 0
    var fsyncs = 0
  }
  private let counts = Mutex(Counts())
  let failingWrites: Set<Int>
  let failingFsyncs: Set<Int>

  init(writes: Set<Int> = [], fsyncs: Set<Int> = []) {
    failingWrites = writes
    failingFsyncs = fsyncs
  }

  var operations: StoreFileOperations {
    StoreFileOperations(
      write: { fd, bytes in
        let n = self.counts.withLock {
          $0.writes += 1; return $0.writes
        }
        guard self.failingWrites.contains(n) else {
          return Glibc.write(fd, bytes.baseAddress, bytes.count)
        }
        let half = Glibc.write(fd, bytes.baseAddress, bytes.count / 2)
        guard half >= 0 else { return half }
        errno = EIO
        return -1
      },
      fsync: { fd in
        let n = self.counts.withLock {
          $0.fsyncs += 1; return $0.fsyncs
        }
        guard self.failingFsyncs.contains(n) else { return Glibc.fsync(fd) }
        errno = EIO
        return -1
      })
  }
}

@Suite("File store under write failures")
struct FileStoreFaultTests {
  func member(_ i: Int) -> StateChange {
    .registered(
      MembershipTable.Member(
        id: "m\(i)", role: .memoryNode, dataAddress: "h:\(i)", controlAddress: "h:1",
        capacityBytes: UInt64(i + 1), transport: "tcp", leaseExpiresAt: 0, status: .up,
        incarnation: 1))
  }

  /// Appends `changes` as the coordinator does: a change is in the state only when `append`
  /// returned; returns the acknowledged state and how many appends failed.
  func append(_ changes: [StateChange], to store: FileCoordinatorStore) throws -> (
    CoordinatorState, Int
  ) {
    var acknowledged = try store.load() ?? CoordinatorState(leaseSeconds: 1)
    var failures = 0
    for change in changes {
      var next = acknowledged
      next.apply(change)
      do {
        try store.append(change, state: next)
        acknowledged = next
      } catch {
        #expect(error.code == .storageFailure, "\(error)")
        failures += 1
      }
    }
    return (acknowledged, failures)
  }

  @Test(
    "a short write and a failed fsync are cut from the log: after restart the state is exactly what was acknowledged"
  )
  func failedAppendsAreRolledBack() throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // The 3rd record's write is torn (its cut is fsync 3); the 5th record's fsync (5) fails
    // after a whole write.
    let faults = InjectedFaults(writes: [3], fsyncs: [5])
    let acknowledged: CoordinatorState
    do {
      let store = try FileCoordinatorStore(
        directory: dir, snapshotEvery: 100, operations: faults.operations)
      let (state, failures) = try append((0..<8).map(member), to: store)
      #expect(failures == 2)
      #expect(state.revision == 6)
      acknowledged = state
    }
    let restored = try FileCoordinatorStore.loadOnce(dir)
    #expect(restored == acknowledged)
    #expect(
      Set(restored?.membership.members.keys.map { $0 } ?? [])
        == ["m0", "m1", "m3", "m5", "m6", "m7"])
  }

  @Test(
    "a snapshot that fails after its record was durable does not fail the change; it is retried")
  func snapshotFailureKeepsTheChange() throws {
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // Appends: 1 fsync each; the 2nd append also snapshots (its 3rd fsync fails).
    let faults = InjectedFaults(fsyncs: [3])
    let three: CoordinatorState
    do {
      let store = try FileCoordinatorStore(
        directory: dir, snapshotEvery: 2, operations: faults.operations)
      let (two, failures) = try append([member(0), member(1)], to: store)
      #expect(failures == 0)
      #expect(two.revision == 2)
      #expect(store.snapshotFailure != nil)
      #expect(try FileCoordinatorStore.loadOnceSharing(store) == two)
      (three, _) = try append([member(2)], to: store)
      #expect(store.snapshotFailure == nil)
      #expect(three.revision == 3)
    }
    #expect(FileManager.default.fileExists(atPath: dir + "/state.snapshot"))
    #expect(try FileCoordinatorStore.loadOnce(dir) == three)
  }
}
