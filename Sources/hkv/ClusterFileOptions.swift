import ArgumentParser
import Foundation
import HeteroKVConfig
import HeteroKVDaemon
import HeteroKVTransport
import Logging

/// `--config` and `--set`, shared by the commands that read a cluster file. Environment
/// variables (`HKV_<KEY_PATH>`) override the file and `--set` overrides both.
struct ClusterFileOptions: ParsableArguments {
  @Option(help: "Cluster file (YAML); see docs/configuration.md.")
  var config: String?

  @Option(
    name: .customLong("set"),
    help: ArgumentHelp(
      "Override a key of the cluster file, e.g. --set budgets.memory_fraction=0.25 (repeatable).",
      valueName: "key.path=value"))
  var assignments: [String] = []

  /// The file with environment and flag overrides applied; nil without --config.
  func load(environment: [String: String] = ProcessInfo.processInfo.environment) throws
    -> ClusterConfiguration?
  {
    guard let config else {
      if !assignments.isEmpty { throw ValidationError("--set needs --config") }
      return nil
    }
    do {
      let overrides =
        ConfigurationOverride.fromEnvironment(environment)
        + (try ConfigurationOverride.fromAssignments(assignments))
      return try ClusterConfiguration.load(path: config, overrides: overrides)
    } catch {
      throw CommandFailure(description: error.description)
    }
  }
}

extension ClusterConfiguration {
  /// The control-plane security of this cluster: the token resolved now, the TLS files.
  func controlPlaneSecurity() throws -> ControlPlaneSecurity {
    do {
      return ControlPlaneSecurity(token: try security.resolveToken(), tls: security.tls)
    } catch {
      throw CommandFailure(description: error.description)
    }
  }

  /// Who may use the memory nodes' data plane: the cluster token (every namespace) and each
  /// tenant's token, bound to its namespaces and per-node quota. Tokens are resolved now.
  func dataPlaneAccess() throws -> DataPlaneAccess {
    do {
      var tenants: [String: DataPlaneAccess.Tenant] = [:]
      for t in security.tenants {
        tenants[t.name] = DataPlaneAccess.Tenant(
          secret: try t.resolveToken(),
          grant: DataPlaneGrant(
            tenant: t.name, namespaces: Set(t.namespaces), quotaBytes: t.quotaBytes))
      }
      return DataPlaneAccess(clusterToken: try security.resolveToken(), tenants: tenants)
    } catch {
      throw CommandFailure(description: error.description)
    }
  }
}

/// Sends swift-log output to stderr at `level` (once per process).
func bootstrapLogging(_ level: String) throws -> Logger.Level {
  guard let parsed = Logger.Level(rawValue: level) else {
    throw ValidationError(
      "bad --log-level '\(level)': expected trace, debug, info, notice, warning, error or critical")
  }
  LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = parsed
    return handler
  }
  return parsed
}
