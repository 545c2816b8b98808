import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVTestSupport
import HeteroKVWire
import HeteroKVWorker
import Testing

/// A prefill whose attention sits on one block of tokens (A) while another block (B) waits, and
/// decode queries that either stay on A or move to B: what a pivot's drift check must tell
/// apart.
struct DriftScenario {
  static let geometry = try! ModelGeometry(
    name: "drift", layers: 1, queryHeads: 4, kvHeads: 2, headDim: 64)
  static let tokens = 1024
  static let blockA = 100..<150
  static let blockB = 600..<650

  var state: UInt64 = 0x9E37_79B9_7F4A_7C15

  mutating func noise() -> Float {
    state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    return Float(Int64(bitPattern: state >> 11) % 2001 - 1000) / 1000 * 0.3
  }

  /// K/V `[tokens][kvHeads][d]` for tokens `range`: block A's keys point along dimension 0,
  /// block B's along dimension 1, the rest is noise.
  mutating func rows(_ range: Range<Int>) -> (keys: [Float16], values: [Float16]) {
    let g = Self.geometry
    var keys: [Float16] = []
    var values: [Float16] = []
    for t in range {
      for _ in 0..<g.kvHeads {
        for i in 0..<g.headDim {
          var k = noise()
          if Self.blockA.contains(t) && i == 0 { k += 6 }
          if Self.blockB.contains(t) && i == 1 { k += 6 }
          keys.append(Float16(k))
          values.append(Float16(noise()))
        }
      }
    }
    return (keys, values)
  }

  /// Queries `[queryHeads][d]` along dimension `axis`.
  static func queries(axis: Int) -> [Float] {
    let g = geometry
    return (0..<g.queryHeads).flatMap { _ in
      (0..<g.headDim).map { $0 == axis ? Float(8) : 0 }
    }
  }
}

@Suite("HeteroCache drift and satellite refresh", .serialized)
struct DriftRefreshTests {
  /// Decodes 14 steps with queries along `decodeAxis`; returns the sequence's refreshes, the
  /// satellite's cap and how many of block B's tokens its cache held at the first and last step.
  func run(decodeAxis: Int) async throws -> (refreshes: Int, cap: Int, before: Int, after: Int) {
    let g = DriftScenario.geometry
    var options = LocalCluster.Options(model: g)
    options.capacityBytes = 64 << 20
    options.budgets = BudgetSettings(policy: .heterocache, memoryFraction: 0.15, minTokens: 16)
    // Static caches: the satellite holds only what its refresh brings.
    options.budgets.recall = false
    options.worker = WorkerSettings(keyCodec: .pq, keyBits: 8, groupSize: 4, window: 8, sinks: 4)
    options.outputMode = .exact
    options.chunkTokens = 4096
    // Head 0 a pivot, head 1 its satellite.
    let profiles = [
      HeadProfile(layer: 0, kvHead: 0, stability: 0.9, similarity: [1, 0.9], role: .pivot),
      HeadProfile(
        layer: 0, kvHead: 1, stability: 0.9, similarity: [0.9, 1], role: .satellite(pivot: 0)),
    ]
    var scenario = DriftScenario()
    return try await withCluster(options) { cluster in
      let worker = cluster.worker
      let ref = SequenceRef(sequence: 3)
      _ = try await worker.createSequence(ref, maxTokens: 2048, profiles: profiles)
      let prefill = scenario.rows(0..<DriftScenario.tokens)
      try await worker.append(
        ref, layer: 0, tokens: DriftScenario.tokens, keys: prefill.keys, values: prefill.values,
        observation: DriftScenario.queries(axis: 0))
      var firstB = 0
      var lastB = 0
      let satelliteQuery = g.groupSize  // the first query head of KV head 1
      for step in 0..<14 {
        let row = scenario.rows((DriftScenario.tokens + step)..<(DriftScenario.tokens + step + 1))
        try await worker.append(ref, layer: 0, tokens: 1, keys: row.keys, values: row.values)
        let result = try await worker.attend(
          ref, layer: 0, queries: DriftScenario.queries(axis: decodeAxis), withSelection: true)
        let kept = Set(try #require(result.selections)[satelliteQuery].map(Int.init))
        let inB = DriftScenario.blockB.filter(kept.contains).count
        if step == 0 { firstB = inB }
        lastB = inB
        // The refresh gathers rows in the background: give it time to land before the next step.
        try await Task.sleep(for: .milliseconds(50))
      }
      let stats = try await worker.stats(ref)
      let cap = try #require(stats.heads.first { $0.kvHead == 1 }).cap
      #expect(stats.heads.map(\.role) == [.pivot, .satellite(pivot: 0)])
      try await worker.release(ref)
      return (stats.refreshes, cap, firstB, lastB)
    }
  }

  @Test(
    "a pivot whose attention moves refreshes its satellite, whose cache then holds the new tokens"
  )
  func movingPivotRefreshes() async throws {
    let moved = try await run(decodeAxis: 1)
    // The satellite keeps a fraction of the context, so what it holds is a choice.
    try #require(moved.cap < DriftScenario.tokens / 2, "cap \(moved.cap)")
    #expect(moved.refreshes >= 1)
    #expect(moved.before < 25, "block B in the satellite before: \(moved.before)")
    #expect(moved.after >= 45, "block B in the satellite after: \(moved.after)")
  }

  @Test("a pivot whose attention stays put triggers no refresh; its satellite keeps its tokens")
  func steadyPivotDoesNot() async throws {
    let steady = try await run(decodeAxis: 0)
    #expect(steady.refreshes == 0)
    #expect(steady.after == steady.before)
  }
}

@Suite("HeteroCache recall", .serialized)
struct RecallTests {
  /// Two anchors whose prefill attention sits on block A and whose decode queries move to
  /// block B, 6 steps; returns per step how many of B's tokens KV head 0's first query head
  /// kept and the relative error of that group's output against exact attention, and the
  /// worker's share of fp16 K/V.
  func run(recall: Bool) async throws -> (keptB: [Int], error: [Double], cap: Int, share: Double) {
    let g = DriftScenario.geometry
    var options = LocalCluster.Options(model: g)
    options.capacityBytes = 64 << 20
    var worker = RecommendedSettings.worker
    worker.window = 8
    options.worker = worker
    options.outputMode = .exact
    options.chunkTokens = 4096
    var budgets = BudgetSettings(policy: .heterocache, memoryFraction: 0.4, minTokens: 16)
    budgets.recall = recall
    options.budgets = budgets.chargingKeyCodes(
      of: worker, headDim: g.headDim, tokens: DriftScenario.tokens,
      heldRows: WorkerOptions.defaultDecodeShipRows)
    #expect(options.budgets.recall == recall)
    let profiles = (0..<g.kvHeads).map {
      HeadProfile(
        layer: 0, kvHead: $0, stability: 0.9, similarity: (0..<g.kvHeads).map { _ in 0 },
        role: .anchor)
    }
    var scenario = DriftScenario()
    return try await withCluster(options) { cluster in
      let ref = SequenceRef(sequence: 5)
      _ = try await cluster.worker.createSequence(ref, maxTokens: 2048, profiles: profiles)
      let prefill = scenario.rows(0..<DriftScenario.tokens)
      var keys = prefill.keys
      var values = prefill.values
      try await cluster.worker.append(
        ref, layer: 0, tokens: DriftScenario.tokens, keys: prefill.keys, values: prefill.values,
        observation: DriftScenario.queries(axis: 0))
      var keptB: [Int] = []
      var errors: [Double] = []
      for step in 0..<6 {
        let t = DriftScenario.tokens + step
        let row = scenario.rows(t..<(t + 1))
        keys += row.keys
        values += row.values
        try await cluster.worker.append(
          ref, layer: 0, tokens: 1, keys: row.keys, values: row.values)
        let q = DriftScenario.queries(axis: 1)
        let result = try await cluster.worker.attend(
          ref, layer: 0, queries: q, withSelection: true)
        let kept = Set(try #require(result.selections)[0].map(Int.init))
        keptB.append(DriftScenario.blockB.filter(kept.contains).count)
        // Exact attention of KV head 0's group over every token.
        let d = g.headDim
        let head0 = (0...t).flatMap { r in (0..<d).map { keys[(r * g.kvHeads) * d + $0] } }
        let value0 = (0...t).flatMap { r in (0..<d).map { values[(r * g.kvHeads) * d + $0] } }
        let exact = try FullAttention.attend(
          queries: Array(q[0..<(g.groupSize * d)]), heads: g.groupSize,
          keys: try HalfMatrix(halves: head0, cols: d),
          values: try HalfMatrix(halves: value0, cols: d))
        errors.append(
          maxRelativeDifference(
            [Array(result.output[0..<(g.groupSize * d)])], [exact.outputs], headDim: d))
      }
      let stats = try await cluster.worker.stats(ref)
      #expect(stats.heads.allSatisfy { $0.role == .anchor })
      let cap = try #require(stats.heads.first).cap
      try await cluster.worker.release(ref)
      return (keptB, errors, cap, Double(stats.workerBytes) / Double(stats.fullKVBytes))
    }
  }

  @Test(
    "an anchor whose decode attention leaves its cache recalls the new tokens; a static one cannot")
  func recallFollowsDecode() async throws {
    let recalled = try await run(recall: true)
    let fixed = try await run(recall: false)
    // The caches hold a fraction of the context, so what they hold is a choice.
    try #require(recalled.cap < DriftScenario.blockB.lowerBound, "cap \(recalled.cap)")
    // The static caches hold what the prefill voted for (block A), and block B only by chance.
    #expect(fixed.keptB.allSatisfy { $0 < 25 }, "static: \(fixed.keptB)")
    #expect(recalled.keptB.allSatisfy { $0 == DriftScenario.blockB.count }, "\(recalled.keptB)")
    #expect(recalled.error.max()! < 0.02, "recall error \(recalled.error)")
    #expect(fixed.error.min()! > 0.2, "static error \(fixed.error)")
    // Recall pays for its codes with a smaller cache, inside the same budget.
    #expect(recalled.cap < fixed.cap)
    #expect(
      recalled.share <= 0.4 + 0.01 && fixed.share <= 0.4 + 0.01,
      "\(recalled.share) \(fixed.share)")
  }

  @Test("recall with renormalized output is refused at start, naming both settings")
  func recallNeedsExactOutput() throws {
    var options = WorkerOptions(
      id: "w", geometry: DriftScenario.geometry, outputMode: .renormalized)
    options.recall = true
    #expect {
      try Worker(
        options: options, control: CoordinatorControl(address: HostPort(host: "127.0.0.1", port: 1))
      )
    } throws: { error in
      "\(error)".contains("budgets.recall") && "\(error)".contains("output_mode exact")
    }
  }
}
