import CoreMetrics
import Foundation
import HeteroKVControlPlane
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVEtcd
import HeteroKVSettings
import HeteroKVWire
import Logging
import ServiceLifecycle
import Synchronization

/// One of several coordinator processes sharing their state in etcd, as a lifecycle
/// `Service`. It campaigns for leadership (``EtcdLeaderElection``: a lease of the member
/// lease's length and a create-if-absent leader key naming it and its address); while it
/// leads, it opens the state from etcd and serves every call with a ``Coordinator`` whose
/// writes are guarded by that leadership, and runs the lease ticker and the row reclaimer.
/// While it stands by, it keeps the state current through a watch on etcd (a hot standby: a
/// takeover reads only the log's tail), and every call is refused with the leader's address,
/// which members and the admin CLI follow. It steps down when its leadership lapses (no renewal reached etcd for a
/// lease), and campaigns again.
public final class ReplicatedCoordinatorDaemon: Service, Sendable {
  public let configuration: ClusterConfiguration
  /// This replica's id.
  public let id: String
  /// Where this replica listens.
  public let control: HostPort
  /// Ready once etcd answered (as leader or standby).
  public let health = DaemonHealth(conditions: ["store"])
  let etcd: EtcdClient
  let prefix: String
  let election: EtcdLeaderElection
  private let server: GRPCServerService
  private let security: ControlPlaneSecurity
  private let metricsFactory: any MetricsFactory
  private let logger: Logger
  private let now: @Sendable () -> Double
  private let slot: ReplicaSlot
  /// The state a standby keeps current.
  let follower: EtcdStateFollower

  /// Replica `id` of the cluster in `configuration` (whose coordinator section has an etcd
  /// store; `replicas` names `id`, or there are no replicas and it listens at `control`).
  public init(
    configuration: ClusterConfiguration, id: String, security: ControlPlaneSecurity,
    metricsFactory: any MetricsFactory, logger: Logger,
    now: @escaping @Sendable () -> Double = Coordinator.monotonicSeconds
  ) throws(HeteroKVError) {
    guard let settings = configuration.coordinator, let etcdSettings = settings.etcd else {
      throw .failedPrecondition("the cluster file's coordinator section has no etcd store")
    }
    let replica: CoordinatorReplica
    if settings.replicas.isEmpty {
      replica = CoordinatorReplica(id: id, control: settings.control, metrics: settings.metrics)
    } else {
      guard let named = settings.replicas.first(where: { $0.id == id }) else {
        throw .invalid(
          "coordinator.replicas has no \"\(id)\" (it has "
            + settings.replicas.map(\.id).joined(separator: ", ") + ")")
      }
      replica = named
    }
    self.configuration = configuration
    self.id = id
    self.control = replica.control
    self.security = security
    self.metricsFactory = metricsFactory
    self.logger = logger
    self.now = now
    var credentials: EtcdCredentials?
    if let user = etcdSettings.user {
      credentials = EtcdCredentials(user: user, password: try Self.password(etcdSettings))
    }
    // A write etcd cannot commit (no quorum) fails within this, well inside a client's own
    // deadline, instead of holding the coordinator.
    etcd = try EtcdClient(
      endpoints: etcdSettings.endpoints.map { EtcdEndpoint(host: $0.host, port: $0.port) },
      timeout: .seconds(2),
      tls: etcdSettings.tls.map {
        EtcdTLS(
          caPath: $0.ca, certificatePath: $0.certificate, keyPath: $0.key,
          serverName: $0.serverName)
      }, credentials: credentials)
    prefix = etcdSettings.prefix
    election = EtcdLeaderElection(
      client: etcd, key: Array((etcdSettings.prefix + "/leader").utf8),
      value: Array("\(id) \(replica.control)".utf8),
      ttl: max(1, Int(settings.leaseSeconds.rounded(.up))))
    slot = ReplicaSlot(configuration: configuration, id: id)
    follower = EtcdStateFollower(client: etcd, prefix: etcdSettings.prefix)
    server = GRPCServerService(
      host: replica.control.host, port: replica.control.port,
      services: [CoordinatorService(access: slot)],
      serviceNames: [Heterokv_V1_Coordinator.descriptor.fullyQualifiedService], health: health,
      security: security)
  }

  /// The gRPC port, once listening.
  public func listeningPort() async throws -> Int { try await server.listeningPort() }

  /// The coordinator while this replica leads; else the redirect to the leader.
  public func leading() throws(HeteroKVError) -> Coordinator { try slot.leading() }

  /// This replica's role: leading, or standing by with the leader it knows.
  public var role: (leading: Bool, leader: (id: String, address: String)?) { slot.role }

  public func run() async throws {
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await self.etcd.run() }
      group.addTask { try await self.server.run() }
      group.addTask {
        await cancelWhenGracefulShutdown { await self.lead() }
        self.etcd.shutdown()
      }
    }
  }

  /// Campaigns, leads while leadership holds, stands by otherwise; until shutdown.
  private func lead() async {
    let settings = configuration.coordinator!
    let poll = Duration.milliseconds(Int64(max(100, settings.leaseSeconds * 1000 / 3)))
    let tick = Duration.milliseconds(Int64(max(10, settings.leaseSeconds * 250)))
    while !Task.isCancelled {
      do {
        guard let leadership = try await election.attempt() else {
          // A hot standby: the state followed through a watch on the log.
          follower.start()
          let known = try await election.leader().flatMap { Self.parse($0.value) }
          slot.set(nil, leader: known)
          health.set("store", met: true, detail: "standing by; etcd answers")
          try await Task.sleep(for: poll)
          continue
        }
        // What the standby followed needs only the log's tail read.
        let followed = follower.state
        follower.stop()
        let store = try await EtcdCoordinatorStore.open(
          client: etcd, prefix: prefix, leadership: leadership,
          snapshotEvery: settings.snapshotEvery, following: followed)
        let coordinator = try Coordinator(
          configuration: configuration, store: store, metricsFactory: metricsFactory,
          logger: logger, now: now)
        slot.set(coordinator, leader: (id, control.description))
        health.set("store", met: true, detail: "leading; state read from etcd")
        let revision = await coordinator.snapshot().revision
        logger.info(
          "leading the cluster", metadata: ["replica": "\(id)", "revision": "\(revision)"])
        let reclaimer = RowReclaimer(coordinator: coordinator, security: security, logger: logger)
        while leadership.isHeld && !Task.isCancelled {
          do {
            try await coordinator.expireLeases()
            try await reclaimer.run()
          } catch {
            logger.error("cannot record lapsed leases: \(error)")
          }
          try? await Task.sleep(for: tick)
        }
        slot.set(nil, leader: nil)
        // Stop renewing either way, and give the key up if etcd still holds it: a lease this
        // replica kept renewing after it stepped down would keep its stale key alive.
        await election.resign(leadership)
        if !Task.isCancelled {
          logger.warning("leadership lost; standing by", metadata: ["replica": "\(id)"])
        }
      } catch {
        slot.set(nil, leader: nil)
        health.set("store", met: false, detail: "etcd: \(error)")
        logger.warning("etcd unavailable; retrying: \(error)")
        try? await Task.sleep(for: poll)
      }
    }
  }

  /// The etcd user's password, from the environment variable or file the cluster file names.
  static func password(_ settings: EtcdSettings) throws(HeteroKVError) -> String {
    if let name = settings.passwordEnv {
      guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
        throw .invalid("coordinator.etcd.password_env names \(name), which is not set")
      }
      return value
    }
    if let path = settings.passwordFile {
      guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw .invalid("coordinator.etcd.password_file \(path) cannot be read")
      }
      return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    throw .invalid("coordinator.etcd.user needs password_env or password_file")
  }

  /// `id address` from a leader key's value.
  static func parse(_ value: [UInt8]) -> (id: String, address: String)? {
    let parts = String(decoding: value, as: UTF8.self).split(separator: " ", maxSplits: 1)
    guard parts.count == 2 else { return nil }
    return (String(parts[0]), String(parts[1]))
  }
}

/// What a replica's gRPC service asks for each call: the coordinator while it leads, or the
/// redirect naming the leader.
final class ReplicaSlot: CoordinatorAccess, Sendable {
  let configuration: ClusterConfiguration
  let id: String
  var replicaID: String? { id }
  private let state = Mutex<
    (coordinator: Coordinator?, leader: (id: String, address: String)?, last: Coordinator?)
  >((nil, nil, nil))

  init(configuration: ClusterConfiguration, id: String) {
    self.configuration = configuration
    self.id = id
  }

  func set(_ coordinator: Coordinator?, leader: (id: String, address: String)?) {
    state.withLock {
      $0.coordinator = coordinator
      $0.leader = leader
      if let coordinator { $0.last = coordinator }
      // Another replica leads: what this one last held is stale.
      if leader != nil && coordinator == nil { $0.last = nil }
    }
  }

  func reading() throws(HeteroKVError) -> Coordinator {
    let (coordinator, leader, last) = state.withLock { ($0.coordinator, $0.leader, $0.last) }
    if let coordinator { return coordinator }
    if leader == nil, let last { return last }
    throw CoordinatorRedirect.error(standby: id, leader: leader)
  }

  var role: (leading: Bool, leader: (id: String, address: String)?) {
    state.withLock { ($0.coordinator != nil, $0.leader) }
  }

  func leading() throws(HeteroKVError) -> Coordinator {
    let (coordinator, leader) = state.withLock { ($0.coordinator, $0.leader) }
    if let coordinator { return coordinator }
    throw CoordinatorRedirect.error(standby: id, leader: leader)
  }
}
