import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVCoordinator
import HeteroKVDaemon
import HeteroKVWire
import Logging
import Prometheus
import ServiceLifecycle

/// `hkv coordinator`: runs the coordinator daemon until SIGTERM or SIGINT.
struct CoordinatorCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "coordinator",
    abstract: "Run the coordinator: membership, placement and per-head budgets.",
    discussion: """
      Settings come from the cluster file's coordinator section (--config); environment
      variables HKV_<KEY_PATH> and --set override it. State (members, sequences, placements,
      profiles, budgets) is kept in coordinator.state_dir and survives a restart. With
      coordinator.store: etcd the state lives in etcd instead, and several coordinators
      (coordinator.replicas, each started with its --id) share it: one leads, the others
      stand by, redirect every call to the leader, and take over when its lease lapses. Once
      the gRPC server listens, one line goes to stdout:
        ready coordinator=HOST:PORT state_dir=DIR revision=N metrics=HOST:PORT|none
        ready coordinator=HOST:PORT store=etcd replica=ID metrics=HOST:PORT|none  (etcd)
      Logs go to stderr.
      """)

  @OptionGroup var file: ClusterFileOptions

  @Option(help: "This coordinator's id among coordinator.replicas (store: etcd).")
  var id: String?

  @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
  var logLevel: String = "info"

  func run() async throws {
    guard let cluster = try file.load() else { throw ValidationError("--config is required") }
    guard let settings = cluster.coordinator else {
      throw CommandFailure(
        description: "\(file.config!) has no coordinator section; see docs/configuration.md")
    }
    let security = try cluster.controlPlaneSecurity()
    _ = try bootstrapLogging(logLevel)
    let logger = Logger(label: "hkv.coordinator")
    let registry = PrometheusCollectorRegistry()
    if settings.store == .etcd {
      guard let id = id ?? (settings.replicas.isEmpty ? "coordinator" : nil) else {
        throw ValidationError(
          "--id is required with coordinator.replicas (one of "
            + settings.replicas.map(\.id).joined(separator: ", ") + ")")
      }
      let replicated: ReplicatedCoordinatorDaemon
      do {
        replicated = try ReplicatedCoordinatorDaemon(
          configuration: cluster, id: id, security: security,
          metricsFactory: PrometheusMetricsFactory(registry: registry), logger: logger)
      } catch {
        throw CommandFailure(description: error.description)
      }
      let metrics = settings.replicas.first { $0.id == id }?.metrics ?? settings.metrics
      try await runDaemon(
        role: "coordinator", [replicated], metrics: metrics, registry: registry,
        health: replicated.health, logger: logger
      ) {
        let port = try await replicated.listeningPort()
        return
          "coordinator=\(HostPort(host: replicated.control.host, port: port)) store=etcd replica=\(id)"
      }
      return
    }
    let daemon: CoordinatorDaemon
    do {
      let store = try FileCoordinatorStore(
        directory: settings.stateDirectory, snapshotEvery: settings.snapshotEvery)
      daemon = try CoordinatorDaemon(
        configuration: cluster, store: store, security: security,
        metricsFactory: PrometheusMetricsFactory(registry: registry), logger: logger)
    } catch {
      throw CommandFailure(description: error.description)
    }
    if security.token == nil {
      logger.warning("no security.token_env or token_file: control calls are not authenticated")
    }
    try await runDaemon(
      role: "coordinator", [daemon], metrics: settings.metrics, registry: registry,
      health: daemon.health, logger: logger
    ) {
      let port = try await daemon.listeningPort()
      let revision = await daemon.coordinator.snapshot().revision
      return
        "coordinator=\(HostPort(host: settings.control.host, port: port)) state_dir=\(settings.stateDirectory) revision=\(revision)"
    }
  }
}
