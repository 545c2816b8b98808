import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVDaemon
import HeteroKVLocalCluster
import HeteroKVWire
import HeteroKVWorker
import Logging
import UnixSignals

/// `hkv cluster`: a whole cluster on one machine, for engines and people who want one without
/// starting each daemon.
struct ClusterCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "cluster",
    abstract: "Run a whole cluster on this machine as child processes.",
    subcommands: [ClusterUpCommand.self])
}

/// `hkv cluster up`: a coordinator, the memory nodes and a worker as child processes until
/// SIGTERM or SIGINT; the children stop with it however it ends.
struct ClusterUpCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "up",
    abstract: "Start a coordinator, memory nodes and a worker as children; stop them on exit.",
    discussion: """
      From a cluster file (--config FILE: every role it names, at its addresses) or from a
      transformers config.json (--model-config FILE: a cluster on free loopback ports for the
      model's full-attention layers, with the recommended settings at --policy and --budget;
      with --in-process, every role in this process and the memory nodes reached without
      sockets, as a worker reaches its own host's memory).
      Once every child is ready, one line goes to stdout:
        ready engine=HOST:PORT coordinator=HOST:PORT config=FILE layers=N logs=DIR
      SIGTERM or SIGINT stops every child and exits 0; each child also stops by itself when
      this process dies, even by SIGKILL. With HKV_PARENT_PID set (an engine that started it),
      it stops when that process is gone. A child that exits early is reported on stderr.
      """)

  @Option(help: "A cluster file with a coordinator, memory nodes and a worker.")
  var config: String?

  @Option(help: "A transformers config.json: a loopback cluster sized for that model.")
  var modelConfig: String?

  @Option(help: "With --model-config: memory nodes.")
  var memnodes: Int = 2

  @Option(help: "With --model-config: capacity of each memory node (e.g. 4GiB).")
  var capacity: String = "4GiB"

  @Option(help: "With --model-config: memory nodes holding each shard.")
  var replication: Int = 1

  @Option(help: "With --model-config: hcattention, heterocache or uniform.")
  var policy: String = "hcattention"

  @Option(help: "With --model-config: share of fp16 K/V the worker keeps.")
  var budget: Double = 0.125

  @Option(help: "With --model-config: the longest context a sequence is planned for.")
  var maxContext: Int = 8192

  @Option(
    help:
      "Where the generated cluster file, the coordinator's state and the logs go (default: a temporary folder, removed at exit)."
  )
  var directory: String?

  @Flag(
    help:
      "With --model-config: every role in this one process, the worker reaching the memory nodes without sockets (the co-located data plane), the engine API over gRPC as usual."
  )
  var inProcess = false

  func validate() throws {
    guard (config == nil) != (modelConfig == nil) else {
      throw ValidationError("give exactly one of --config and --model-config")
    }
    guard (1...64).contains(memnodes) else { throw ValidationError("--memnodes must be 1...64") }
    guard (1...memnodes).contains(replication) else {
      throw ValidationError("--replication must be 1...--memnodes (\(memnodes))")
    }
    guard budget > 0, budget <= 1 else { throw ValidationError("--budget must be in (0, 1]") }
    guard maxContext > 0 else { throw ValidationError("--max-context must be positive") }
    guard BudgetPolicyKind(rawValue: policy) != nil else {
      throw ValidationError(
        "bad --policy '\(policy)': expected heterocache, hcattention or uniform")
    }
    guard !inProcess || modelConfig != nil else {
      throw ValidationError("--in-process needs --model-config")
    }
    guard ByteSize.parse(capacity) != nil else {
      throw ValidationError("bad --capacity '\(capacity)': expected a size such as 4GiB")
    }
  }

  func run() async throws {
    if inProcess { return try await runInProcess() }
    // A folder of this run's own unless one is named (a reused process id must not find an
    // earlier run's coordinator state); removed at exit unless named.
    let folder = URL(
      fileURLWithPath: directory ?? NSTemporaryDirectory() + "hkv-cluster-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { if directory == nil { try? FileManager.default.removeItem(at: folder) } }
    let file = try config ?? writeClusterFile(in: folder)
    let cluster = try ChildCluster.start(
      file: file, logs: folder.appendingPathComponent("logs"), ownsDirectory: directory == nil)
    let coordinator = cluster.configuration.coordinator?.controlAddresses.first
    FileHandle.standardOutput.write(
      Data(
        "ready engine=\(cluster.engine.map { "\($0)" } ?? "none") coordinator=\(coordinator.map { "\($0)" } ?? "none") config=\(file) layers=\(cluster.configuration.model?.layers ?? 0) logs=\(folder.appendingPathComponent("logs").path)\n"
          .utf8))
    await withTaskGroup(of: Void.self) { tasks in
      tasks.addTask { await Self.stopRequested() }
      tasks.addTask {
        var reported = Set<Int32>()
        while !Task.isCancelled {
          let running = Set(cluster.running.map(\.pid))
          for child in cluster.started
          where !running.contains(child.pid)
            && !reported.contains(child.pid)
          {
            reported.insert(child.pid)
            FileHandle.standardError.write(
              Data("hkv cluster: \(child.role) (pid \(child.pid)) exited\n".utf8))
          }
          try? await Task.sleep(for: .milliseconds(500))
        }
      }
      await tasks.next()
      tasks.cancelAll()
    }
    cluster.stop()
  }

  /// Returns on SIGTERM or SIGINT, or once the process named by HKV_PARENT_PID (an engine
  /// that started this one) is gone.
  static func stopRequested() async {
    await withTaskGroup(of: Void.self) { tasks in
      tasks.addTask {
        for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
      }
      if let watch = ParentProcessWatch.fromEnvironment() {
        tasks.addTask { try? await watch.parentExit() }
      }
      await tasks.next()
      tasks.cancelAll()
    }
  }

  /// --in-process: the whole cluster in this process, served until asked to stop.
  private func runInProcess() async throws {
    let path = modelConfig!
    let model = try Self.readModelConfig(path)
    LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
    let (worker, budgets) = recommended(for: model)
    var options = LocalCluster.Options(model: model.geometry)
    options.memoryNodes = memnodes
    options.capacityBytes = ByteSize.parse(capacity)!
    options.replication = replication
    options.worker = worker
    options.outputMode = worker.outputMode
    options.budgets = budgets
    options.serveEngine = true
    options.colocatedDataPlane = true
    let cluster = try await LocalCluster.start(options, logger: Logger(label: "hkv.cluster"))
    FileHandle.standardOutput.write(
      Data(
        "ready engine=\(cluster.engineAddress.map { "\($0)" } ?? "none") coordinator=in-process config=none layers=\(model.geometry.layers) logs=none\n"
          .utf8))
    await Self.stopRequested()
    await cluster.shutdown()
  }

  /// The recommended worker settings and budgets for `model` at --policy and --budget.
  private func recommended(for model: TransformersModelConfig) -> (WorkerSettings, BudgetSettings) {
    let worker = RecommendedSettings.worker
    let budgets = RecommendedSettings.budgets(
      policy: BudgetPolicyKind(rawValue: policy)!, memoryFraction: budget
    )
    .recallingOnly(with: worker.outputMode)
    .chargingKeyCodes(
      of: worker, headDim: model.geometry.headDim, tokens: maxContext,
      heldRows: WorkerOptions.defaultDecodeShipRows)
    return (worker, budgets)
  }

  static func readModelConfig(_ path: String) throws -> TransformersModelConfig {
    do {
      return try TransformersModelConfig(
        json: try Data(contentsOf: URL(fileURLWithPath: path)), file: path)
    } catch let error as ConfigurationError {
      throw CommandFailure(description: "\(error)")
    } catch {
      throw CommandFailure(description: "cannot read \(path): \(error.localizedDescription)")
    }
  }

  /// The cluster file for --model-config: loopback ports free now, recommended settings.
  private func writeClusterFile(in folder: URL) throws -> String {
    let model = try Self.readModelConfig(modelConfig!)
    func port() throws -> HostPort { HostPort(host: "127.0.0.1", port: try freePort()) }
    let (recommendedWorker, budgets) = recommended(for: model)
    var worker = recommendedWorker
    worker.control = try port()
    let planned = ClusterConfiguration(
      name: "local", model: model.geometry,
      coordinator: CoordinatorSettings(
        control: try port(), stateDirectory: folder.appendingPathComponent("coordinator").path,
        leaseSeconds: 6, heartbeatSeconds: 2),
      memoryNodes: try (0..<memnodes).map { i in
        MemoryNodeSettings(
          id: "mem-\(i)", data: try port(), control: try port(),
          capacityBytes: ByteSize.parse(capacity)!)
      },
      worker: worker, budgets: budgets, replication: replication)
    let file = folder.appendingPathComponent("cluster.yaml")
    try planned.yaml().write(to: file, atomically: true, encoding: .utf8)
    return file.path
  }
}
