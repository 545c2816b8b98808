import HeteroKVCore
import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVCoordinatorClient
import HeteroKVDaemon
import HeteroKVWire

/// Options every admin command shares: where the coordinator is, how to print.
struct AdminOptions: ParsableArguments {
  @OptionGroup var file: ClusterFileOptions

  @Option(help: "Coordinator address host:port (default: coordinator.control of --config).")
  var coordinator: String?

  @Flag(help: "Print JSON (for scripts) instead of a table.")
  var json = false

  @Option(help: "Seconds to wait for the coordinator.")
  var timeout: Double = 5

  /// Runs `body` against the coordinator; failures become one clear line.
  func withClient<T: Sendable>(_ body: (CoordinatorClient) async throws -> T) async throws -> T {
    let cluster = try file.load()
    let addresses: [HostPort]
    if let coordinator {
      guard let parsed = HostPort(coordinator) else {
        throw ValidationError("bad --coordinator '\(coordinator)': expected host:port")
      }
      addresses = [parsed]
    } else if let controls = cluster?.coordinator?.controlAddresses {
      addresses = controls
    } else {
      throw ValidationError(
        "no coordinator address: give --coordinator HOST:PORT or a --config with a coordinator section"
      )
    }
    let security =
      try cluster?.controlPlaneSecurity()
      ?? ControlPlaneSecurity(token: ProcessInfo.processInfo.environment["HKV_TOKEN"])
    guard timeout > 0, timeout <= 600 else {
      throw ValidationError("--timeout must be in (0, 600]")
    }
    do {
      return try await CoordinatorClient.withLeader(
        among: addresses, security: security, timeout: .milliseconds(Int64(timeout * 1000)), body
      ).result
    } catch let error as HeteroKVError {
      throw CommandFailure(description: error.message)
    } catch let error as CommandFailure {
      throw error
    } catch {
      throw CommandFailure(
        description: "cannot reach the coordinator at \(addresses.map(\.description)): \(error)")
    }
  }

  /// Prints `value` as JSON (snake_case keys, sorted) or `table()` as text.
  func emit<T: Encodable>(_ value: T, table: () -> String) throws {
    if json {
      try writeJSON(value)
    } else {
      print(table(), terminator: "")
    }
  }
}

/// `hkv nodes`: every member, its role, lease and use.
struct NodesCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "nodes", abstract: "List the cluster's members and their leases.")

  @OptionGroup var options: AdminOptions

  func run() async throws {
    let response = try await options.withClient { try await $0.nodes() }
    let view = NodesView(members: response.members.map(MemberRow.init))
    try options.emit(view) {
      TextTable(
        ["ID", "ROLE", "STATUS", "DATA", "CONTROL", "TRANSPORT", "CAPACITY", "USED", "LEASE"],
        rows: view.members.map {
          [
            $0.id, $0.role, $0.status, $0.dataAddress, $0.controlAddress, $0.transport,
            ByteSize.format($0.capacityBytes), ByteSize.format($0.usedBytes),
            $0.status == "up" ? String(format: "%.1fs", $0.leaseRemainingSeconds) : "lapsed",
          ]
        }
      ).render()
    }
  }
}

/// `hkv budgets`: per-head token caps, of one sequence or all, optionally one layer.
struct BudgetsCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "budgets", abstract: "Show per-head token budgets.")

  @OptionGroup var options: AdminOptions

  @Option(help: "Sequence number (default: every open sequence).")
  var sequence: UInt64?

  @Option(help: "Tenant namespace of --sequence.")
  var namespace: UInt32 = 0

  @Option(help: "Only this layer.")
  var layer: Int?

  func run() async throws {
    let response = try await options.withClient {
      try await $0.budgets(namespace: namespace, sequence: sequence, layer: layer)
    }
    let view = BudgetsView(sequences: response.sequences.map(SequenceBudgetsView.init))
    try options.emit(view) {
      if view.sequences.isEmpty { return "no open sequences\n" }
      return view.sequences.map { s in
        "sequence \(s.namespace)/\(s.sequence): policy \(s.policy.isEmpty ? "(no profiles yet)" : s.policy), "
          + "prefill \(s.prefillTokens) tokens, compressed heads share \(s.totalTokens) tokens\n"
          + TextTable(
            ["LAYER", "HEAD", "ROLE", "CAP"],
            rows: s.heads.map { ["\($0.layer)", "\($0.kvHead)", $0.role, "\($0.cap)"] }
          ).render()
      }.joined(separator: "\n")
    }
  }
}

/// `hkv heads --sequence ID`: each head's role, pivot, stability, similarity and cap.
struct HeadsCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "heads", abstract: "Show the roles and profiles of a sequence's heads.")

  @OptionGroup var options: AdminOptions

  @Option(help: "Sequence number.")
  var sequence: UInt64

  @Option(help: "Tenant namespace of --sequence.")
  var namespace: UInt32 = 0

  @Option(help: "Only this layer.")
  var layer: Int?

  func run() async throws {
    let response = try await options.withClient {
      try await $0.budgets(namespace: namespace, sequence: sequence, layer: layer)
    }
    guard let budgets = response.sequences.first.map(SequenceBudgetsView.init) else {
      throw CommandFailure(description: "no open sequence \(namespace)/\(sequence)")
    }
    try options.emit(budgets) {
      if budgets.heads.isEmpty {
        return "sequence \(namespace)/\(sequence) has no head profiles yet\n"
      }
      return TextTable(
        ["LAYER", "HEAD", "ROLE", "PIVOT", "STABILITY", "SIMILARITY", "CAP"],
        rows: budgets.heads.map {
          [
            "\($0.layer)", "\($0.kvHead)", $0.role, $0.pivot.map(String.init) ?? "-",
            String(format: "%.3f", $0.stability), String(format: "%.3f", $0.similarity),
            "\($0.cap)",
          ]
        }
      ).render()
    }
  }
}

/// `hkv status`: pool capacity and use, members up and down, sequences.
struct StatusCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "status", abstract: "Show pool capacity and use, nodes and sequences.")

  @OptionGroup var options: AdminOptions

  func run() async throws {
    let s = try await options.withClient { try await $0.status() }
    let view = StatusView(s)
    try options.emit(view) {
      var text = """
        cluster      \(view.cluster) (policy \(view.policy), replication \(view.replication))
        coordinator  store \(view.store)\(view.leader.isEmpty ? "" : ", leader \(view.leader)")\(view.standbys.isEmpty ? "" : ", standbys \(view.standbys.joined(separator: " "))")
        memory nodes \(view.nodesUp) up, \(view.nodesDown) down; workers \(view.workersUp) up
        pool         \(ByteSize.format(view.capacityBytes)) capacity, \(ByteSize.format(view.usedBytes)) used, \(ByteSize.format(view.reservedBytes)) reserved
        sequences    \(view.sequences.count) open, \(view.underReplicatedShards) shards under-replicated, \(view.sequencesAwaitingDrop) closed awaiting drop

        """
      if !view.sequences.isEmpty {
        text += TextTable(
          [
            "SEQUENCE", "WORKER", "MAX TOKENS", "PREFILL", "PLACEMENT V", "REPAIRED V",
            "UNDER-REPL", "COPIED", "RESERVED", "HEADS",
          ],
          rows: view.sequences.map {
            [
              "\($0.namespace)/\($0.sequence)", $0.worker, "\($0.maxTokens)", "\($0.prefillTokens)",
              "\($0.placementVersion)", $0.repairedVersion == 0 ? "-" : "\($0.repairedVersion)",
              "\($0.underReplicatedShards)", "\($0.shardsCopied)",
              ByteSize.format($0.reservedBytes), "\($0.heads)",
            ]
          }
        ).render()
      }
      return text
    }
  }
}

// MARK: Views (what --json prints)

struct MemberRow: Codable {
  var id, role, status, dataAddress, controlAddress, transport: String
  var capacityBytes, usedBytes, incarnation: UInt64
  var leaseRemainingSeconds: Double

  init(_ m: Heterokv_V1_MemberInfo) {
    id = m.memberID
    role = m.role == .memoryNode ? "memory_node" : "worker"
    status = m.status
    dataAddress = m.dataAddress
    controlAddress = m.controlAddress
    transport = m.role == .memoryNode ? m.transport : "-"
    capacityBytes = m.capacityBytes
    usedBytes = m.usedBytes
    incarnation = m.incarnation
    leaseRemainingSeconds = (m.leaseRemainingSeconds * 1000).rounded() / 1000
  }
}

struct NodesView: Codable { var members: [MemberRow] }

struct HeadRow: Codable {
  var layer, kvHead: Int
  var role: String
  var pivot: Int?
  var stability, similarity: Double
  var cap: UInt64
}

struct SequenceBudgetsView: Codable {
  var namespace: UInt32
  var sequence: UInt64
  var policy: String
  var prefillTokens, totalTokens: UInt64
  var heads: [HeadRow]

  init(_ s: Heterokv_V1_SequenceBudgets) {
    namespace = s.ref.namespace
    sequence = s.ref.sequence
    policy = s.policy
    prefillTokens = s.prefillTokens
    totalTokens = s.totalTokens
    heads = s.heads.map {
      HeadRow(
        layer: Int($0.layer), kvHead: Int($0.kvHead), role: $0.role,
        pivot: $0.role == "satellite" ? Int($0.pivot) : nil, stability: $0.stability,
        similarity: $0.similarity, cap: $0.cap)
    }
  }
}

struct BudgetsView: Codable { var sequences: [SequenceBudgetsView] }

struct SequenceRow: Codable {
  var namespace: UInt32
  var sequence: UInt64
  var worker: String
  var maxTokens, prefillTokens, placementVersion, reservedBytes: UInt64
  var heads: UInt32
  /// From the worker's last replication report (0: none yet).
  var repairedVersion, shardsCopied: UInt64
  var underReplicatedShards: UInt32
}

struct StatusView: Codable {
  var cluster, policy: String
  var replication, nodesUp, nodesDown, workersUp: UInt32
  var capacityBytes, usedBytes, reservedBytes: UInt64
  var sequences: [SequenceRow]
  var underReplicatedShards, sequencesAwaitingDrop: UInt32
  var store, leader: String
  var standbys: [String]

  init(_ s: Heterokv_V1_ClusterStatus) {
    cluster = s.cluster
    policy = s.policy
    replication = s.replication
    nodesUp = s.nodesUp
    nodesDown = s.nodesDown
    workersUp = s.workersUp
    capacityBytes = s.capacityBytes
    usedBytes = s.usedBytes
    reservedBytes = s.reservedBytes
    sequences = s.sequences.map {
      SequenceRow(
        namespace: $0.ref.namespace, sequence: $0.ref.sequence, worker: $0.workerID,
        maxTokens: $0.maxTokens, prefillTokens: $0.prefillTokens,
        placementVersion: $0.placementVersion, reservedBytes: $0.reservedBytes, heads: $0.headCount,
        repairedVersion: $0.repairedVersion, shardsCopied: $0.shardsCopied,
        underReplicatedShards: $0.underReplicatedShards)
    }
    underReplicatedShards = s.sequences.reduce(0) { $0 + $1.underReplicatedShards }
    sequencesAwaitingDrop = s.sequencesAwaitingDrop
    store = s.store.isEmpty ? "file" : s.store
    leader = s.leader
    standbys = s.replicas.filter { $0 != s.leader }
  }
}

/// Prints `value` as JSON on stdout: snake_case keys, sorted, indented.
/// The UTF-8 text of `path`, given by option `flag`; an unreadable file is one error naming both.
func readTextFile(_ path: String, flag: String) throws -> String {
  do {
    return try String(contentsOfFile: path, encoding: .utf8)
  } catch {
    throw CommandFailure(description: "cannot read \(flag) \(path): \(error.localizedDescription)")
  }
}

func writeJSON<T: Encodable>(_ value: T) throws {
  let encoder = JSONEncoder()
  encoder.keyEncodingStrategy = .convertToSnakeCase
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
  FileHandle.standardOutput.write(try encoder.encode(value) + Data("\n".utf8))
}

/// Columns padded to their widest cell.
struct TextTable {
  var header: [String]
  var rows: [[String]]

  init(_ header: [String], rows: [[String]]) {
    self.header = header
    self.rows = rows
  }

  func render() -> String {
    let all = [header] + rows
    let widths = header.indices.map { c in all.map { $0[c].count }.max() ?? 0 }
    return all.map { row in
      row.enumerated().map { c, cell in
        c == row.count - 1 ? cell : cell.padding(toLength: widths[c], withPad: " ", startingAt: 0)
      }.joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
  }
}
