import Foundation
import HeteroKVCore
import Testing

@testable import HeteroKVEval

func smallWorkload(context: Int = 2048, steps: Int = 8, layers: Int = 1) throws -> SyntheticWorkload
{
  var c = SyntheticWorkloadConfiguration(geometry: .llama3_8B)
  c.layers = layers
  c.contextLength = context
  c.decodeSteps = steps
  return try SyntheticWorkload(c)
}

func temporaryDirectory() -> URL {
  let url = FileManager.default.temporaryDirectory.appendingPathComponent(
    "hkv-test-\(UUID().uuidString)")
  try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
  return url
}

@Suite struct EvalHarnessTests {
  @Test func reportCoversEveryPolicyAndBudgetAndJSONParses() throws {
    var options = try EvalOptions(policies: EvalOptions.knownPolicies, budgets: [0.25, 0.0625])
    options.centroids = [256]
    options.kmeansIterations = 3
    options.heteroCache = try HeteroCacheConfiguration(topK: 128)
    let report = try EvalHarness.run(try smallWorkload(), options: options)
    #expect(report.rows.count == (EvalOptions.knownPolicies.count - 1) * 2 + 1)
    let full = try #require(report.rows.first { $0.policy == "full" })
    #expect(
      full.relativeL2Error! < 1e-6 && full.massRecall! > 0.9999 && full.residentFraction! == 1)
    // KIVI has no 1-bit setting: a clear n/a, not a number.
    let kivi = try #require(report.rows.first { $0.policy == "kivi" && $0.budget == 0.0625 })
    #expect(kivi.status.hasPrefix("n/a") && kivi.relativeL2Error == nil)
    for row in report.rows where row.status == "ok" && row.policy != "full" {
      #expect(
        row.relativeL2Error! > 0, "\(row.policy) at \(row.budget) differs from full attention")
      #expect(row.massRecall! > 0 && row.massRecall! <= 1.0001)
    }
    let hc = try #require(report.rows.first { $0.policy == "heterocache" && $0.budget == 0.25 })
    #expect(hc.roles!.values.reduce(0, +) == 8)
    #expect(hc.retrievalShare != nil)
    let decoded = try JSONDecoder().decode([EvalRow].self, from: Data(try report.json().utf8))
    #expect(decoded == report.rows)
    #expect(report.table().contains("hcattention-exact"))
  }

  @Test func hcattentionKeepsTheMassThatWindowsLose() throws {
    var options = try EvalOptions(
      policies: ["hcattention-exact", "streamingllm", "full"], budgets: [0.125])
    options.centroids = [1024]
    options.kmeansIterations = 4
    let report = try EvalHarness.run(try smallWorkload(context: 4096), options: options)
    let hc = report.rows.first { $0.policy == "hcattention-exact" }!
    let window = report.rows.first { $0.policy == "streamingllm" }!
    #expect(hc.massRecall! > 0.8)
    #expect(hc.massRecall! > window.massRecall!)
    #expect(hc.relativeL2Error! < window.relativeL2Error!)
    // Only indices, weights and d-sized results move: far below the values themselves.
    let valuesPerStep = Double(4096 * 8 * 128 * 2)
    #expect(hc.bytesMovedPerStep! < valuesPerStep / 4)
  }

  @Test func centroidAblationRunsOneRowPerCentroidCountAndMoreCentroidsHelp() throws {
    var options = try EvalOptions(policies: ["hcattention"], budgets: [0.125])
    options.centroids = [16, 512]
    options.kmeansIterations = 4
    let report = try EvalHarness.run(try smallWorkload(context: 2048, steps: 4), options: options)
    #expect(report.rows.map(\.policy) == ["hcattention c=16", "hcattention c=512"])
    #expect(report.rows[1].relativeL2Error! < report.rows[0].relativeL2Error!)
  }

  @Test func codebooksTrainedOnTheCalibrationSampleAreSharedNotPerSequence() throws {
    var options = try EvalOptions(policies: ["hcattention"], budgets: [0.125])
    options.centroids = [64]
    options.kmeansIterations = 3
    let own = try EvalHarness.run(try smallWorkload(context: 1024, steps: 2), options: options)
    options.pqCalibrationSample = true
    let shared = try EvalHarness.run(try smallWorkload(context: 1024, steps: 2), options: options)
    // Codes alone are exactly 12.5% of fp16 K+V; an own-prefill codebook adds its bytes.
    #expect(abs(shared.rows[0].residentFraction! - 0.125) < 1e-9)
    #expect(own.rows[0].residentFraction! > 0.125)
    #expect(shared.rows[0].massRecall! > 0.85)

    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: dir) }
    try TraceWorkload.write(try smallWorkload(context: 128, steps: 2), to: dir)
    #expect(throws: HeteroKVError.self) {
      try EvalHarness.run(try TraceWorkload(directory: dir), options: options)
    }
  }

  @Test(arguments: [ModelGeometry.qwen2_5_7B, .smolLM2_135M])
  func everyPolicyRunsWithOddGroupSizes(geometry: ModelGeometry) throws {
    var c = SyntheticWorkloadConfiguration(geometry: geometry)
    c.layers = 1
    c.contextLength = 1024
    c.decodeSteps = 3
    var options = try EvalOptions(policies: EvalOptions.knownPolicies, budgets: [0.25])
    options.centroids = [64]
    options.kmeansIterations = 2
    options.heteroCache = try HeteroCacheConfiguration(topK: 64)
    let report = try EvalHarness.run(try SyntheticWorkload(c), options: options)
    for row in report.rows {
      #expect(row.status == "ok", "\(row.policy): \(row.status)")
      #expect(row.relativeL2Error!.isFinite && row.massRecall! > 0)
    }
  }

  @Test func unknownPoliciesAndBadBudgetsAreRejected() {
    #expect(throws: HeteroKVError.self) { try EvalOptions(policies: ["lru"], budgets: [0.1]) }
    #expect(throws: HeteroKVError.self) { try EvalOptions(policies: ["full"], budgets: [1.5]) }
    #expect(throws: HeteroKVError.self) { try EvalOptions(policies: [], budgets: [0.5]) }
  }
}

@Suite struct TraceTests {
  @Test func aTraceRoundTripsAndEvaluatesLikeItsSource() throws {
    let source = try smallWorkload(context: 512, steps: 4)
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: dir) }
    try TraceWorkload.write(source, to: dir, dtype: .float32)
    let trace = try TraceWorkload(directory: dir)
    #expect(trace.geometry.kvHeads == 8 && trace.contextLength == 512 && trace.decodeSteps == 4)
    #expect(trace.observationWindow == source.observationWindow)
    let a = try source.layer(0)
    let b = try trace.layer(0)
    for h in [0, 5] {
      #expect(a.heads[h].keys == b.heads[h].keys)
      #expect(a.heads[h].values == b.heads[h].values)
      #expect(a.heads[h].observationQueries == b.heads[h].observationQueries)
      #expect(a.heads[h].decodeQueries == b.heads[h].decodeQueries)
      #expect(a.heads[h].decodeKeys == b.heads[h].decodeKeys)
    }
    let options = try EvalOptions(policies: ["h2o", "quest", "kivi"], budgets: [0.25])
    let r1 = try EvalHarness.run(source, options: options)
    let r2 = try EvalHarness.run(trace, options: options)
    for (x, y) in zip(r1.rows, r2.rows) {
      #expect(abs(x.relativeL2Error! - y.relativeL2Error!) < 1e-6, "\(x.policy)")
    }
  }

  @Test func bfloat16TracesLoadClose() throws {
    let source = try smallWorkload(context: 256, steps: 2)
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: dir) }
    try TraceWorkload.write(source, to: dir, dtype: .bfloat16)
    let layer = try TraceWorkload(directory: dir).layer(0)
    let original = try source.layer(0).heads[1].decodeQueries[1]
    let loaded = layer.heads[1].decodeQueries[1]
    for (x, y) in zip(original, loaded) { #expect(abs(x - y) <= abs(x) / 128 + 1e-6) }
  }

  func expectMalformed(
    _ dir: URL, mentioning needle: String, sourceLocation: SourceLocation = #_sourceLocation
  ) {
    do {
      let t = try TraceWorkload(directory: dir)
      _ = try t.layer(0)
      Issue.record("malformed trace accepted", sourceLocation: sourceLocation)
    } catch let e as HeteroKVError {
      #expect(
        e.code == .malformedInput || e.code == .nonFiniteInput, sourceLocation: sourceLocation)
      #expect(e.message.contains(needle), "\(e.message)", sourceLocation: sourceLocation)
    } catch {
      Issue.record("untyped error \(error)", sourceLocation: sourceLocation)
    }
  }

  @Test func malformedTracesNameTheFileAndTheProblem() throws {
    let source = try smallWorkload(context: 128, steps: 2)
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: dir) }
    try TraceWorkload.write(source, to: dir)
    let manifest = dir.appendingPathComponent("manifest.json")
    let k = dir.appendingPathComponent("layer_000/k_prefill.npy")
    let good = try Data(contentsOf: manifest)
    let goodK = try Data(contentsOf: k)

    try FileManager.default.removeItem(at: manifest)
    expectMalformed(dir, mentioning: "manifest.json")

    var json = try JSONSerialization.jsonObject(with: good) as! [String: Any]
    json.removeValue(forKey: "prefill_tokens")
    try JSONSerialization.data(withJSONObject: json).write(to: manifest)
    expectMalformed(dir, mentioning: "prefill_tokens")

    json = try JSONSerialization.jsonObject(with: good) as! [String: Any]
    json["prefill_tokens"] = 200
    try JSONSerialization.data(withJSONObject: json).write(to: manifest)
    expectMalformed(dir, mentioning: "k_prefill.npy")

    try good.write(to: manifest)
    try goodK.prefix(goodK.count - 10).write(to: k)
    expectMalformed(dir, mentioning: "truncated")

    try Data("not numpy at all".utf8).write(to: k)
    expectMalformed(dir, mentioning: "k_prefill.npy")

    var values = try source.layer(0).heads.flatMap { $0.keys.floats() }
    values[17] = .nan
    try NPYArray.encode(values, shape: [128, 8, 128], dtype: .float16).write(to: k)
    expectMalformed(dir, mentioning: "non-finite")

    try NPYArray.encode(values, shape: [128, 8, 128], dtype: .float32).write(to: k)
    expectMalformed(dir, mentioning: "does not match")
  }
}
