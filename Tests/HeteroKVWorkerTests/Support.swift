import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVTestSupport
import HeteroKVWorker

/// A small model: 2 layers, 8 query heads over 2 KV heads of 64 dims.
let tinyModel = try! ModelGeometry(name: "tiny", layers: 2, queryHeads: 8, kvHeads: 2, headDim: 64)

/// The synthetic workload on the tiny model.
func tinyWorkload(tokens: Int = 2048, steps: Int = 6, seed: UInt64 = 1) throws -> WorkloadReplay {
  var c = SyntheticWorkloadConfiguration(geometry: tinyModel)
  c.layers = tinyModel.layers
  c.contextLength = tokens
  c.decodeSteps = steps
  c.observationWindow = 16
  c.sampleSeed = seed
  return try WorkloadReplay(SyntheticWorkload(c))
}

/// Cluster options where every head keeps everything: budget 1, tau 1, exact outputs.
func fullBudgetOptions(
  policy: BudgetPolicyKind = .heterocache, replication: Int = 1, serveEngine: Bool = false
) -> LocalCluster.Options {
  var o = LocalCluster.Options(model: tinyModel)
  o.capacityBytes = 256 << 20
  o.replication = replication
  o.serveEngine = serveEngine
  o.budgets = BudgetSettings(policy: policy, memoryFraction: 1, minTokens: 16)
  o.worker = WorkerSettings(keyCodec: .pq, keyBits: 8, groupSize: 4, window: 16, sinks: 4, tau: 1)
  o.outputMode = .exact
  o.chunkTokens = 1024
  return o
}

/// Runs `body` on a fresh local cluster, shut down afterwards.
func withCluster<T: Sendable>(
  _ options: LocalCluster.Options, _ body: (LocalCluster) async throws -> T
) async throws -> T {
  let cluster = try await LocalCluster.start(options, logger: quietLogger)
  do {
    let result = try await body(cluster)
    await cluster.shutdown()
    return result
  } catch {
    await cluster.shutdown()
    throw error
  }
}

/// Largest element-wise relative difference of two output sets, by vector norm per head.
func maxRelativeDifference(_ a: [[Float]], _ b: [[Float]], headDim d: Int) -> Double {
  var worst = 0.0
  for (x, y) in zip(a, b) {
    for h in 0..<(x.count / d) {
      worst = max(
        worst,
        Double(
          FidelityAccumulator.relativeL2(x[(h * d)..<((h + 1) * d)], y[(h * d)..<((h + 1) * d)])))
    }
  }
  return worst
}
