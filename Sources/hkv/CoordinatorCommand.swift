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
      profiles, budgets) is kept in coordinator.state_dir and survives a restart. Once the
      gRPC server listens, one line goes to stdout:
        ready coordinator=HOST:PORT state_dir=DIR revision=N metrics=HOST:PORT|none
      Logs go to stderr.
      """)

  @OptionGroup var file: ClusterFileOptions

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
