import Foundation
import HeteroKVCore

/// Settings of a harness run.
public struct EvalOptions: Sendable {
  /// Policy names, in report order.
  public var policies: [String]
  /// Memory budgets (shares of fp16 K+V).
  public var budgets: [Double]
  /// HCAttention's mass share.
  public var tau: Float = 0.9
  /// HeteroCache's mass share (its full heads, and its compressed heads' recall); nil: `tau`.
  public var heteroCacheTau: Float?
  /// PQ centroids per sub-vector codebook; several values run HCAttention once per value
  /// (rows named `hcattention c=N`), the centroid ablation.
  public var centroids: [Int] = [4096]
  /// Train HCAttention's codebooks on the workload's calibration sample instead of each
  /// sequence's own prefill (a shared codebook, not counted as per-sequence memory).
  public var pqCalibrationSample = false
  /// PQ k-means iterations.
  public var kmeansIterations: Int = 6
  /// HCAttention on the worker's key index (its codec, exact sinks and window; `centroids`
  /// and the calibration sample then do not apply); nil: codes sized to fill the budget, the
  /// paper's rule.
  public var keyIndex: KeyIndexRecipe?
  /// HeteroCache's compressed heads recall what their caches lack (with `keyIndex`).
  public var heteroCacheRecall = false
  /// Exact outputs estimate the tokens a step does not keep (`UnkeptTokenEstimate`), as the
  /// worker's `unkept_estimate`.
  public var estimatesUnkept = false
  /// What the HCAttention-family policies select over, as the worker's `selection`. By
  /// default the paper's rule, each query head its own set (the harness's defaults are the
  /// paper's); `hkv eval` passes the worker's, one set per KV head unless told otherwise.
  public var selection: SelectionScope = .queryHead
  /// HCAttention on `keyIndex`: what each budget leaves over the codes buys finer codes for
  /// the heads whose keys the codes reconstruct worst, ranked over every layer, as the
  /// worker's `finer_codes` ranks them at the end of a prefill.
  public var finerCodes = false
  /// Unshipped decode rows the worker holds per head, charged before finer codes are bought
  /// (the worker's `decodeShipRows`).
  public var heldDecodeRows = 32
  /// HeteroCache thresholds and sizes.
  public var heteroCache = HeteroCacheConfiguration()

  /// Every policy name the harness knows.
  public static let knownPolicies = [
    "hcattention", "hcattention-raw", "hcattention-exact", "heterocache", "streamingllm", "h2o",
    "tova", "snapkv", "quest", "kivi", "full",
  ]

  public init(policies: [String], budgets: [Double]) throws {
    for p in policies where !Self.knownPolicies.contains(p) {
      throw HeteroKVError.invalid(
        "unknown policy '\(p)'; known: \(Self.knownPolicies.joined(separator: ", "))")
    }
    for b in budgets where !(b > 0 && b <= 1) {
      throw HeteroKVError.invalid("budget \(b) is not a share in (0, 1]")
    }
    guard !policies.isEmpty, !budgets.isEmpty else {
      throw HeteroKVError.invalid("at least one policy and one budget are needed")
    }
    self.policies = policies
    self.budgets = budgets
  }
}

/// Runs policies over a workload and measures each against full attention on the same data.
public enum EvalHarness {
  struct Run {
    let policy: any AttentionPolicy
    let budget: Double
    var row: EvalRow
    var fidelity = FidelityAccumulator()
    var resident = 0
    var retrievalSteps = 0
    var seconds = 0.0
    var failed: Bool { row.status != "ok" }
  }

  /// Evaluates; `progress` receives short lines for a progress display.
  public static func run(
    _ workload: any AttentionWorkload, options: EvalOptions,
    progress: @escaping (String) -> Void = { _ in }
  ) throws -> EvalReport {
    let geometry = workload.geometry
    var profiles: [HeadProfile] = []
    if options.policies.contains("heterocache") {
      let sample = try workload.calibrationSample() ?? workload
      progress("calibrating HeteroCache on \(sample.summary)")
      profiles = try HeteroCacheCalibration.profile(sample, configuration: options.heteroCache) {
        progress("calibrated layer \($0 + 1)/\(geometry.layers)")
      }
    }
    var runs: [Run] = []
    let finerHeads = try finerCodeHeads(workload, options: options, progress: progress)
    let codebooks = ProductCodebookCache()
    var calibration: CalibrationKeys?
    if options.pqCalibrationSample {
      guard let sample = try workload.calibrationSample() else {
        throw HeteroKVError.invalid(
          "this workload has no calibration sample; train PQ codebooks on the prefill instead")
      }
      calibration = CalibrationKeys(sample: sample)
    }
    for name in options.policies {
      let variants: [(String, Int)] =
        name.hasPrefix("hcattention") && options.centroids.count > 1
        ? options.centroids.map { ("\(name) c=\($0)", $0) } : [(name, options.centroids[0])]
      for (label, centroids) in variants {
        let policy = try makePolicy(
          name, options: options, centroids: centroids, profiles: profiles, codebooks: codebooks,
          calibration: calibration, finerHeads: finerHeads)
        let budgets = name == "full" ? [1.0] : options.budgets
        for b in budgets {
          runs.append(
            Run(policy: policy, budget: b, row: EvalRow(policy: label, budget: b, status: "ok")))
        }
      }
    }
    let g = geometry.groupSize
    for l in 0..<geometry.layers {
      progress("layer \(l + 1)/\(geometry.layers): loading")
      let trace = try workload.layer(l)
      var states: [(any PolicyLayerState)?] = []
      for i in runs.indices {
        guard !runs[i].failed else {
          states.append(nil)
          continue
        }
        progress(
          "layer \(l + 1)/\(geometry.layers): preparing \(runs[i].row.policy) at \(runs[i].budget)")
        let start = Date()
        do {
          states.append(
            try runs[i].policy.prepare(layer: trace, geometry: geometry, budget: runs[i].budget))
        } catch let e as HeteroKVError where e.code == .unsupportedConfiguration {
          runs[i].row.status = "n/a: \(e.message)"
          states.append(nil)
        }
        runs[i].seconds += Date().timeIntervalSince(start)
      }
      var keys = trace.heads.map(\.keys)
      var values = trace.heads.map(\.values)
      for t in 0..<workload.decodeSteps {
        progress("layer \(l + 1)/\(geometry.layers): decode step \(t + 1)/\(workload.decodeSteps)")
        for h in trace.heads.indices {
          try keys[h].append(trace.heads[h].decodeKeys[t])
          try values[h].append(trace.heads[h].decodeValues[t])
        }
        let inputs = trace.heads.indices.map { h in
          HeadStepInput(
            step: t, queries: trace.heads[h].decodeQueries[t], keys: keys[h], values: values[h])
        }
        let reference = try computeReference(inputs, groupSize: g)
        for i in runs.indices where states[i] != nil {
          let start = Date()
          let results = try states[i]!.step(inputs)
          runs[i].seconds += Date().timeIntervalSince(start)
          for (h, r) in results.enumerated() {
            runs[i].fidelity.add(
              outputs: r.outputs, reference: reference[h].outputs,
              probabilities: reference[h].probabilities, attended: r.attended, heads: g,
              bytesMoved: r.bytesMoved)
          }
        }
      }
      for i in runs.indices where states[i] != nil {
        runs[i].resident += states[i]!.residentBytes
        runs[i].retrievalSteps += states[i]!.retrievalSteps
      }
      codebooks.removeAll()
    }
    let tokens = workload.contextLength + workload.decodeSteps
    let fullBytes = Double(geometry.layers * geometry.kvHeads * tokens * geometry.headDim * 4)
    var rows: [EvalRow] = []
    for run in runs {
      var row = run.row
      if !run.failed {
        row.relativeL2Error = run.fidelity.meanRelativeError
        row.cosineSimilarity = run.fidelity.meanCosine
        row.massRecall = run.fidelity.meanMassRecall
        row.keptFraction = run.fidelity.meanKeptFraction
        row.residentFraction = Double(run.resident) / fullBytes
        row.bytesMovedPerStep = Double(run.fidelity.totalBytesMoved) / Double(workload.decodeSteps)
        row.seconds = run.seconds
        if row.policy == "heterocache" {
          row.roles = Dictionary(grouping: profiles, by: { $0.role.name }).mapValues(\.count)
          row.retrievalShare =
            Double(run.retrievalSteps) / Double(geometry.layers * workload.decodeSteps)
        }
      }
      rows.append(row)
    }
    return EvalReport(
      workload: workload.summary, geometry: geometry, contextLength: workload.contextLength,
      decodeSteps: workload.decodeSteps, tau: Double(options.tau),
      heteroCacheTau: options.heteroCacheTau.flatMap { $0 == options.tau ? nil : Double($0) },
      rows: rows)
  }

  /// Per budget, the heads (`layer · kvHeads + kvHead`) that buy finer codes: each head's
  /// index trained as the worker trains it, ranked by reconstruction error, the budget's
  /// count taken from the top. Empty unless `finerCodes` and a pq `keyIndex` ask for it.
  static func finerCodeHeads(
    _ workload: any AttentionWorkload, options: EvalOptions, progress: (String) -> Void
  ) throws -> [Double: Set<Int>] {
    let g = workload.geometry
    guard options.finerCodes, let recipe = options.keyIndex,
      options.policies.contains(where: { $0.hasPrefix("hcattention") })
    else { return [:] }
    let heads = g.layers * g.kvHeads
    let n = workload.contextLength
    // Each budget's codes as the worker sizes them, and how many heads it buys finer ones for.
    let sized = options.budgets.map {
      recipe.fitting(budget: $0, headDim: g.headDim, tokens: n, heldRows: options.heldDecodeRows)
    }
    let counts = zip(options.budgets, sized).map { budget, recipe in
      recipe.finerCodeHeads(
        heads, budget: budget, headDim: g.headDim, prefillTokens: n,
        heldRows: options.heldDecodeRows)
    }
    var picks: [Double: Set<Int>] = [:]
    // Each sized recipe's reconstruction error per head, trained once.
    var rankings: [KeyIndexRecipe: [Double]] = [:]
    for (i, budget) in options.budgets.enumerated() where counts[i] > 0 {
      if rankings[sized[i]] == nil {
        var errors: [Double] = []
        for l in 0..<g.layers {
          progress("layer \(l + 1)/\(g.layers): ranking heads for finer codes")
          let trace = try workload.layer(l)
          errors += try parallelMap(g.kvHeads) { h in
            let head = trace.heads[h]
            var index = try sized[i].index(
              training: head.keys, queries: head.observationQueries, geometry: g.name,
              layer: l, kvHead: h)
            try index.append(head.keys)
            return KeyIndexRecipe.reconstructionError(of: index, keys: head.keys)
          }
        }
        rankings[sized[i]] = errors
      }
      picks[budget] = Set(
        KeyIndexRecipe.finerCodePicks(errors: rankings[sized[i]]!, count: counts[i]))
    }
    return picks
  }

  struct Reference: Sendable {
    var probabilities: [Float]
    var outputs: [Float]
  }

  static func computeReference(_ inputs: [HeadStepInput], groupSize g: Int) throws -> [Reference] {
    try parallelMap(inputs.count) { h in
      let input = inputs[h]
      let p = try FullAttention.probabilities(queries: input.queries, heads: g, keys: input.keys)
      return Reference(
        probabilities: p,
        outputs: Kernels.weightedSum(values: input.values, probabilities: p, heads: g))
    }
  }

  static func makePolicy(
    _ name: String, options: EvalOptions, centroids: Int, profiles: [HeadProfile],
    codebooks: ProductCodebookCache, calibration: CalibrationKeys?,
    finerHeads: [Double: Set<Int>] = [:]
  ) throws -> any AttentionPolicy {
    // With the worker's index, codes are sized to each budget as the worker sizes them.
    let held = options.keyIndex == nil ? nil : options.heldDecodeRows
    switch name {
    case "hcattention", "hcattention-raw", "hcattention-exact":
      let mode: HCAttentionOutputMode =
        name == "hcattention" ? .renormalized : name == "hcattention-raw" ? .raw : .exact
      var policy = HCAttentionPolicy(
        mode: mode, tau: options.tau, centroids: centroids,
        iterations: options.kmeansIterations, codebooks: codebooks, calibration: calibration,
        recipe: options.keyIndex)
      policy.estimatesUnkept = options.estimatesUnkept
      policy.scope = options.selection
      policy.finerHeads = finerHeads
      policy.fitHeldRows = options.finerCodes ? held : nil
      return policy
    case "heterocache":
      var policy = HeteroCachePolicy(
        profiles: profiles, configuration: options.heteroCache,
        tau: options.heteroCacheTau ?? options.tau)
      policy.recipe = options.keyIndex
      policy.recall = options.heteroCacheRecall
      policy.estimatesUnkept = options.estimatesUnkept
      policy.scope = options.selection
      policy.fitHeldRows = held
      return policy
    case "streamingllm": return StreamingLLMPolicy()
    case "h2o": return H2OPolicy()
    case "tova": return TOVAPolicy()
    case "snapkv": return SnapKVPolicy()
    case "quest": return QuestPolicy()
    case "kivi": return KIVIPolicy()
    case "full": return FullAttentionPolicy()
    default: throw HeteroKVError.invalid("unknown policy '\(name)'")
    }
  }
}
