import HeteroKVCore
import HeteroKVDaemon
import HeteroKVWire
import Logging
import ServiceLifecycle
import Synchronization

/// Keeps one member in the cluster as a lifecycle `Service`: registers with the coordinator,
/// renews the lease every heartbeat period, and registers again when the coordinator says the
/// lease lapsed. An unreachable coordinator is retried, never fatal: the member goes on
/// serving and rejoins when the coordinator is back.
public final class MembershipAgent: Service, Sendable {
  /// What to register; `usedBytes` is read at each heartbeat.
  public struct Registration: Sendable {
    public var request: Heterokv_V1_RegisterRequest
    public var usedBytes: @Sendable () -> UInt64

    public init(request: Heterokv_V1_RegisterRequest, usedBytes: @escaping @Sendable () -> UInt64) {
      self.request = request
      self.usedBytes = usedBytes
    }

    /// A memory node's registration: where its data plane and control service listen, over
    /// which transport, its capacity, and its used bytes read at each heartbeat.
    public static func memoryNode(
      id: String, data: HostPort, control: HostPort, transport: DataPlaneTransportKind,
      capacityBytes: Int, usedBytes: @escaping @Sendable () -> UInt64
    ) -> Registration {
      Registration(
        request: .with {
          $0.memberID = id
          $0.role = .memoryNode
          $0.dataAddress = data.description
          $0.controlAddress = control.description
          $0.capacityBytes = UInt64(capacityBytes)
          $0.transport = transport.rawValue
        },
        usedBytes: usedBytes)
    }
  }

  private let coordinators: [HostPort]
  private let security: ControlPlaneSecurity
  private let registration: @Sendable () async throws -> Registration
  private let logger: Logger
  private let retry: Duration
  private let health: DaemonHealth?

  /// An agent that registers what `registration` gives (asked once the member listens).
  /// When `health` is given, its `coordinator` condition holds while the member is
  /// registered and its heartbeats are accepted.
  public convenience init(
    coordinator: HostPort, security: ControlPlaneSecurity, logger: Logger,
    retry: Duration = .seconds(1), health: DaemonHealth? = nil,
    registration: @escaping @Sendable () async throws -> Registration
  ) {
    self.init(
      coordinators: [coordinator], security: security, logger: logger, retry: retry,
      health: health, registration: registration)
  }

  /// An agent for a replicated coordinator: it talks to the replica that leads, following a
  /// standby's redirect and moving to the next address when one cannot be reached. The lease
  /// and incarnation carry over: the new leader read them from the shared store.
  public init(
    coordinators: [HostPort], security: ControlPlaneSecurity, logger: Logger,
    retry: Duration = .seconds(1), health: DaemonHealth? = nil,
    registration: @escaping @Sendable () async throws -> Registration
  ) {
    precondition(!coordinators.isEmpty)
    self.health = health
    self.coordinators = coordinators
    self.security = security
    self.registration = registration
    self.logger = logger
    self.retry = retry
  }

  public func run() async throws {
    let registration = try await registration()
    let id = registration.request.memberID
    // The incarnation outlives a broken connection: after a coordinator restart the member
    // resumes heartbeats and only registers again when told its lease lapsed, so placements
    // that hold its data are kept.
    let joined = Mutex<Heterokv_V1_RegisterResponse?>(nil)
    await cancelWhenGracefulShutdown {
      var index = 0
      while !Task.isCancelled {
        let coordinator = self.coordinators[index % self.coordinators.count]
        do {
          try await CoordinatorClient.with(address: coordinator, security: self.security) {
            client in
            while !Task.isCancelled {
              guard let current = joined.withLock({ $0 }) else {
                let answer = try await client.register(registration.request)
                joined.withLock { $0 = answer }
                self.health?.set(
                  "coordinator", met: true,
                  detail: "registered with \(coordinator) (incarnation \(answer.incarnation))")
                self.logger.info(
                  "registered with the coordinator",
                  metadata: [
                    "coordinator": "\(coordinator)", "incarnation": "\(answer.incarnation)",
                    "lease_s": "\(answer.leaseSeconds)",
                  ])
                continue
              }
              try await Task.sleep(
                for: .milliseconds(Int64(max(10, current.heartbeatSeconds * 1000))))
              let answer = try await client.heartbeat(
                .with {
                  $0.memberID = id
                  $0.incarnation = current.incarnation
                  $0.usedBytes = registration.usedBytes()
                })
              if !answer.accepted {
                self.logger.warning("heartbeat refused; registering again: \(answer.reason)")
                self.health?.set(
                  "coordinator", met: false, detail: "heartbeat refused: \(answer.reason)")
                joined.withLock { $0 = nil }
              } else {
                // After an outage the member resumes heartbeats without registering again.
                self.health?.set(
                  "coordinator", met: true,
                  detail: "registered with \(coordinator) (incarnation \(current.incarnation))"
                )
              }
            }
          }
        } catch is CancellationError {
          return
        } catch {
          // A standby names the leader: go there at once; otherwise try the next replica.
          if let error = error as? HeteroKVError,
            let named = CoordinatorRedirect.leader(in: error.message), let leader = HostPort(named),
            let at = self.coordinators.firstIndex(of: leader)
          {
            index = at
            try? await Task.sleep(for: .milliseconds(50))
            continue
          }
          index += 1
          self.logger.warning("coordinator unavailable; retrying: \(error)")
          self.health?.set(
            "coordinator", met: false, detail: "coordinator \(coordinator) unavailable")
          try? await Task.sleep(for: self.retry)
        }
      }
    }
  }
}
