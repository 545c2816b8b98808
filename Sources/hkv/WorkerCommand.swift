import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVCoordinatorClient
import HeteroKVDaemon
import HeteroKVWire
import HeteroKVWorker
import Logging
import Prometheus
import ServiceLifecycle

/// `hkv worker`: runs the worker daemon (the engine API over gRPC) until SIGTERM or SIGINT.
struct WorkerCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "worker",
    abstract: "Run a worker: key codes and compressed caches, the engine API over gRPC.",
    discussion: """
      Settings come from the cluster file (--config): the model, the worker section (key
      codec, window, sinks, tau, addresses) and the budget policy. The worker registers with
      the file's coordinator and places every sequence it opens through it. Once the engine
      API listens, one line goes to stdout:
        ready worker=ID engine=HOST:PORT coordinator=HOST:PORT metrics=HOST:PORT|none
      Logs go to stderr.
      """)

  @OptionGroup var file: ClusterFileOptions

  @Option(help: "The worker's member id.")
  var id: String = "worker-0"

  @Option(help: "Engine API listen address host:port (default: worker.control of the file).")
  var control: String?

  @Option(help: "Prometheus /metrics listen address host:port; 'none' disables it.")
  var metrics: String?

  @Option(
    help:
      "Output mode: renormalized (weights to the memory nodes) or exact (queries); default: worker.output_mode of the file."
  )
  var outputMode: String?

  @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
  var logLevel: String = "info"

  func run() async throws {
    guard let cluster = try file.load() else { throw ValidationError("--config is required") }
    guard let coordinators = cluster.coordinator?.controlAddresses else {
      throw CommandFailure(description: "\(file.config!) has no coordinator section")
    }
    guard let address = try control.map(parseAddress) ?? cluster.worker.control else {
      throw ValidationError("--control is required when the file has no worker.control")
    }
    let metricsAddress: HostPort? =
      metrics == "none" ? nil : try metrics.map(parseAddress) ?? cluster.worker.metrics
    let mode = try outputMode.map { value in
      guard let mode = HCAttentionOutputModeArgument(rawValue: value) else {
        throw ValidationError("bad --output-mode '\(value)': expected renormalized or exact")
      }
      return mode
    }
    let security = try cluster.controlPlaneSecurity()
    _ = try bootstrapLogging(logLevel)
    let logger = Logger(label: "hkv.worker")
    let registry = PrometheusCollectorRegistry()
    var factory = PrometheusMetricsFactory(registry: registry)
    factory.valueHistogramBuckets = WorkerMetrics.valueHistogramBuckets
    let worker: Worker
    do {
      var options = try WorkerOptions(cluster: cluster, id: id)
      if let mode { options.outputMode = mode.mode }
      options.dataPlaneCredential = security.dataPlaneCredential
      worker = try Worker(
        options: options, control: CoordinatorControl(addresses: coordinators, security: security),
        metrics: WorkerMetrics(workerID: id, factory: factory))
    } catch {
      throw CommandFailure(description: error.message)
    }
    let daemon = WorkerDaemon(
      worker: worker, host: address.host, port: address.port, security: security)
    let id = self.id
    let agent = MembershipAgent(
      coordinators: coordinators, security: security, logger: logger, health: daemon.health
    ) {
      let port = try await daemon.listeningPort()
      return .init(
        request: .with {
          $0.memberID = id
          $0.role = .worker
          $0.controlAddress = HostPort(host: address.host, port: port).description
        },
        usedBytes: { 0 })
    }
    try await runDaemon(
      role: "worker", [daemon, agent], metrics: metricsAddress, registry: registry,
      health: daemon.health, logger: logger
    ) {
      let port = try await daemon.listeningPort()
      return
        "worker=\(id) engine=\(HostPort(host: address.host, port: port)) coordinator=\(coordinators[0])"
    }
  }

  func parseAddress(_ value: String) throws -> HostPort {
    guard let parsed = HostPort(value) else {
      throw ValidationError("bad address '\(value)': expected host:port")
    }
    return parsed
  }
}

/// The output modes a worker can run with.
enum HCAttentionOutputModeArgument: String {
  case renormalized
  case exact

  var mode: HCAttentionOutputMode { self == .exact ? .exact : .renormalized }
}
