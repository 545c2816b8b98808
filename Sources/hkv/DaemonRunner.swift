import Foundation
import HeteroKVDaemon
import HeteroKVWire
import Logging
import Prometheus
import ServiceLifecycle

/// Runs a daemon's services, plus a Prometheus `/metrics` endpoint at `metrics` when given,
/// in one `ServiceGroup` that owns SIGTERM and SIGINT. Once everything listens it prints
/// `ready <fields> metrics=HOST:PORT|none` on stdout, where `fields` returns the rest.
func runDaemon(
  _ services: [any Service], metrics: HostPort?, registry: PrometheusCollectorRegistry,
  logger: Logger, readyFields: @escaping @Sendable () async throws -> String
) async throws {
  let endpoint = metrics.map {
    MetricsEndpoint(registry: registry, host: $0.host, port: $0.port, logger: logger)
  }
  let group = ServiceGroup(
    configuration: .init(
      services: (services + (endpoint.map { [$0] } ?? [])).map { .init(service: $0) },
      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
  try await withThrowingTaskGroup(of: Void.self) { tasks in
    tasks.addTask { try await group.run() }
    tasks.addTask {
      let fields = try await readyFields()
      let metricsAddress =
        if let endpoint, let metrics {
          "\(HostPort(host: metrics.host, port: try await endpoint.listeningPort()))"
        } else { "none" }
      FileHandle.standardOutput.write(Data("ready \(fields) metrics=\(metricsAddress)\n".utf8))
    }
    try await tasks.waitForAll()
  }
}
