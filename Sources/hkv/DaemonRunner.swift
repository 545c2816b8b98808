import Foundation
import HeteroKVDaemon
import HeteroKVWire
import Logging
import Prometheus
import ServiceLifecycle

/// Runs a daemon's services, plus a Prometheus endpoint at `metrics` when given (`/metrics`,
/// `/healthz`, `/readyz` from `health`), in one `ServiceGroup` that owns SIGTERM and SIGINT.
/// Registers `hkv_build_info` for `role`. Once everything listens it prints
/// `ready <fields> version=V build=B metrics=HOST:PORT|none` on stdout, where `fields`
/// returns the role's own.
func runDaemon(
  role: String, _ services: [any Service], metrics: HostPort?,
  registry: PrometheusCollectorRegistry, health: DaemonHealth, logger: Logger,
  readyFields: @escaping @Sendable () async throws -> String
) async throws {
  HeteroKVBuild.register(role: role, in: registry)
  let endpoint = metrics.map {
    MetricsEndpoint(
      registry: registry, health: health, host: $0.host, port: $0.port, logger: logger)
  }
  // A daemon started by `hkv cluster up` (or an engine's embedded cluster) stops with its
  // parent, however the parent ended.
  let watch = ParentProcessWatch.fromEnvironment().map {
    ServiceGroupConfiguration.ServiceConfiguration(
      service: $0, successTerminationBehavior: .gracefullyShutdownGroup)
  }
  let group = ServiceGroup(
    configuration: .init(
      services: (services + (endpoint.map { [$0] } ?? [])).map { .init(service: $0) }
        + (watch.map { [$0] } ?? []),
      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
  try await withThrowingTaskGroup(of: Void.self) { tasks in
    tasks.addTask { try await group.run() }
    tasks.addTask {
      let fields = try await readyFields()
      let metricsAddress =
        if let endpoint, let metrics {
          "\(HostPort(host: metrics.host, port: try await endpoint.listeningPort()))"
        } else { "none" }
      let build = HeteroKVBuild.build.replacingOccurrences(of: " ", with: "/")
      FileHandle.standardOutput.write(
        Data(
          "ready \(fields) version=\(HeteroKVBuild.version) build=\(build) metrics=\(metricsAddress)\n"
            .utf8))
    }
    try await tasks.waitForAll()
  }
}
