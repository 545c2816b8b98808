import ArgumentParser
import HeteroKVDaemon

/// The HeteroKV command: one executable, a subcommand per job.
@main
struct HKV: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "hkv",
    abstract: "HeteroKV: a distributed KV cache for long-context LLM inference.",
    version: HeteroKVBuild.description,
    subcommands: [
      DemoCommand.self, GenerateCommand.self, NeedleCommand.self, FidelityCommand.self,
      TraceCommand.self,
      EvalCommand.self,
      WorkerCommand.self, MemoryNodeCommand.self,
      CoordinatorCommand.self, NodesCommand.self, BudgetsCommand.self, HeadsCommand.self,
      StatusCommand.self, ClusterCommand.self,
    ]
  )
}
