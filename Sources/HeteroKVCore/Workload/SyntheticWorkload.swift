/// The kinds of attention head the synthetic generator plants (see `docs/workloads.md`).
public enum SyntheticHeadKind: String, Sendable, Hashable, Codable, CaseIterable {
  /// Attention sinks plus a RoPE-driven local window; stable.
  case sinkLocal = "sink-local"
  /// A persistent set of heavy-hitter tokens plus sinks; stable.
  case heavyHitter = "heavy-hitter"
  /// Follows one topic segment of the context, moving to other topics during decode and
  /// asking for a planted needle late; heads of this kind in a layer move together.
  case topic
  /// Diffuse, then sharply retrieves a planted needle at asking steps; unstable.
  case retrieval
  /// Diffuse attention with little persistent structure; unstable.
  case diffuse
}

/// Every parameter of the synthetic workload. Deterministic: the same configuration gives
/// bit-identical tensors. `modelSeed` fixes what a head is (its kind, directions, needle
/// positions); `sampleSeed` fixes the token noise, so two samples of one model share heads.
public struct SyntheticWorkloadConfiguration: Sendable, Hashable, Codable {
  public var geometry: ModelGeometry
  /// Layers generated (the first `layers` of the geometry's shape).
  public var layers: Int = 2
  public var contextLength: Int = 16384
  public var decodeSteps: Int = 32
  public var observationWindow: Int = 32
  public var modelSeed: UInt64 = 42
  public var sampleSeed: UInt64 = 1
  /// RoPE base (Llama 3: 500,000).
  public var ropeBase: Double = 500_000
  /// Leading tokens that act as attention sinks.
  public var sinkTokens: Int = 4
  /// Share of tokens that are heavy hitters.
  public var heavyHitterFraction: Double = 0.01
  /// Topic segments the context is divided into.
  public var topics: Int = 8
  /// Needles planted at evenly spread depths.
  public var needles: Int = 4
  /// Key channels with a large constant offset (outliers).
  public var outlierChannels: Int = 4
  /// Size of the outliers' offset, in units of the ordinary channels' standard deviation.
  public var outlierScale: Float = 15
  /// Topic heads switch topic every this many decode steps after the first quarter.
  public var driftEvery: Int = 8
  /// Step at which topic heads ask for a needle (default: three quarters into the decode).
  public var lateNeedleStep: Int? = nil
  /// Which needle topic heads ask for late.
  public var lateNeedle: Int = 0
  /// Correlation of key noise and persistent preferences between heads of one kind in a
  /// layer (they project the same hidden states); 0 makes heads independent.
  public var kindCorrelation: Float = 0.9
  /// Per-channel size of each head's mean value vector (values are not zero-mean).
  public var valueMean: Float = 0.5
  /// Kinds assigned to a layer's KV heads (cycled, then shuffled per layer by `modelSeed`).
  public var headMix: [SyntheticHeadKind] = [
    .sinkLocal, .sinkLocal, .heavyHitter, .heavyHitter, .topic, .topic, .topic, .retrieval,
  ]

  /// A configuration for a geometry with the documented defaults.
  public init(geometry: ModelGeometry) { self.geometry = geometry }

  func validate() throws {
    guard layers > 0, layers <= geometry.layers else {
      throw HeteroKVError.invalid("layers must be in 1...\(geometry.layers), got \(layers)")
    }
    guard contextLength >= 64 else {
      throw HeteroKVError.invalid("context length must be at least 64 tokens, got \(contextLength)")
    }
    guard decodeSteps > 0, observationWindow > 0, observationWindow <= contextLength else {
      throw HeteroKVError.invalid("decode steps and observation window must be positive")
    }
    guard !headMix.isEmpty, topics > 0, needles > 0, driftEvery > 0 else {
      throw HeteroKVError.invalid("head mix, topics, needles and drift interval must be non-empty")
    }
    guard geometry.headDim >= 16, geometry.headDim % 8 == 0 else {
      throw HeteroKVError.dimension("synthetic heads need a head dim multiple of 8, >= 16")
    }
  }
}

/// Synthetic attention with the documented properties of real LLM attention: sinks, local
/// heads (through RoPE), heavy hitters, retrieval of planted needles, heads whose focus drifts
/// during decode, outlier key channels, RoPE rotation of queries and keys.
public struct SyntheticWorkload: AttentionWorkload {
  public let configuration: SyntheticWorkloadConfiguration

  /// A workload; throws when the configuration is out of range.
  public init(_ configuration: SyntheticWorkloadConfiguration) throws {
    try configuration.validate()
    self.configuration = configuration
  }

  public var geometry: ModelGeometry {
    try! configuration.geometry.withLayers(configuration.layers)
  }
  public var contextLength: Int { configuration.contextLength }
  public var decodeSteps: Int { configuration.decodeSteps }
  public var observationWindow: Int { configuration.observationWindow }
  public var summary: String {
    "synthetic \(geometry.name) x\(configuration.layers) layers, \(contextLength) tokens, "
      + "\(decodeSteps) decode steps, seeds \(configuration.modelSeed)/\(configuration.sampleSeed)"
  }

  public func calibrationSample() throws -> (any AttentionWorkload)? {
    var c = configuration
    c.sampleSeed = configuration.sampleSeed &+ 1_000_003
    return try SyntheticWorkload(c)
  }

  /// The kind of each KV head of a layer.
  public func headKinds(layer: Int) -> [SyntheticHeadKind] {
    let mix = configuration.headMix
    var kinds = (0..<geometry.kvHeads).map { mix[$0 % mix.count] }
    var rng = SeededGenerator(seed: configuration.modelSeed, stream: [0x6B69_6E64, UInt64(layer)])
    kinds.shuffle(using: &rng)
    return kinds
  }

  /// Positions of the planted needles.
  public var needlePositions: [Int] {
    let n = contextLength
    let k = configuration.needles
    return (0..<k).map { i in
      max(
        configuration.sinkTokens,
        min(n - 1, Int(Double(n) * (0.1 + 0.8 * Double(i) / Double(max(1, k - 1))))))
    }
  }

  public func layer(_ index: Int) throws -> LayerTrace {
    guard index >= 0, index < configuration.layers else {
      throw HeteroKVError.invalid("layer \(index) is outside 0..<\(configuration.layers)")
    }
    let plan = LayerPlan(
      configuration: configuration, layer: index, kinds: headKinds(layer: index),
      needles: needlePositions)
    let heads = try parallelMap(geometry.kvHeads) { h in plan.head(h) }
    return LayerTrace(layer: index, heads: heads)
  }
}

/// The fixed facts of one layer (directions, heavy hitters) and the generation of its heads.
struct LayerPlan: Sendable {
  let c: SyntheticWorkloadConfiguration
  let layer: Int
  let kinds: [SyntheticHeadKind]
  let needles: [Int]
  let d: Int
  let rope: RotaryEmbedding
  let positional: Range<Int>
  let persistent: Range<Int>
  let semantic: Range<Int>
  let outliers: [Int]
  /// Both channels of every outlier pair.
  var outlierPairs: [Int] { outliers.flatMap { [$0, $0 + 1] } }
  let sinkDirection: [Float]
  let heavyDirection: [Float]
  let topicDirections: [[Float]]
  let needleDirections: [[Float]]
  let isHeavy: [Bool]

  // Key amplitudes of the planted components.
  static let sinkAmplitude: Float = 8
  static let heavyAmplitude: Float = 4
  static let topicAmplitude: Float = 3
  static let needleAmplitude: Float = 6
  static let positionalAmplitude: Float = 3
  /// Standard deviation of key noise in the semantic channels (1 elsewhere).
  static let semanticNoise: Float = 0.3

  init(
    configuration: SyntheticWorkloadConfiguration, layer: Int, kinds: [SyntheticHeadKind],
    needles: [Int]
  ) {
    c = configuration
    self.layer = layer
    self.kinds = kinds
    self.needles = needles
    let d = configuration.geometry.headDim
    self.d = d
    rope = RotaryEmbedding(headDim: d, base: configuration.ropeBase)
    // High-frequency pairs carry position; mid-frequency pairs carry persistent preferences
    // and the outlier channels; low-frequency pairs carry meaning (they barely rotate).
    positional = 0..<d / 2
    persistent = d / 2..<3 * d / 4
    semantic = 3 * d / 4..<d
    // Outliers sit on the first channel of a mid-frequency pair; queries stay small on the
    // whole pair so RoPE does not turn the offset into a positional bias.
    outliers = (0..<min(configuration.outlierChannels, d / 8)).map { d / 2 + 4 * $0 }
    var rng = SeededGenerator(seed: configuration.modelSeed, stream: [0x6469_72, UInt64(layer)])
    // Semantic directions are orthonormal so that one meaning never scores for another.
    let directions = Self.orthonormal(
      count: 2 + configuration.topics + configuration.needles, dim: d, in: semantic, rng: &rng)
    sinkDirection = directions[0]
    heavyDirection = directions[1]
    topicDirections = Array(directions[2..<2 + configuration.topics])
    needleDirections = Array(directions[(2 + configuration.topics)...])
    var heavy = [Bool](repeating: false, count: configuration.contextLength)
    let count = Int(Double(configuration.contextLength) * configuration.heavyHitterFraction)
    for _ in 0..<count {
      heavy[
        configuration.sinkTokens
          + Int(rng.next() % UInt64(configuration.contextLength - configuration.sinkTokens))] = true
    }
    isHeavy = heavy
  }

  func topic(of position: Int) -> Int {
    min(c.topics - 1, position * c.topics / c.contextLength)
  }

  /// The topic a topic head follows at decode step `t` (-1: the prefill).
  func followedTopic(step t: Int) -> Int {
    let start = max(1, c.decodeSteps / 4)
    let last = c.topics - 1
    guard t >= start else { return last }
    let hop = (t - start) / c.driftEvery + 1
    return (last + hop * 3) % c.topics
  }

  var lateNeedleStep: Int { c.lateNeedleStep ?? (3 * c.decodeSteps / 4) }

  func add(_ v: inout [Float], _ direction: [Float], _ amount: Float, offset: Int = 0) {
    if amount == 0 { return }
    for i in 0..<d { v[offset + i] += amount * direction[i] }
  }

  /// Pre-RoPE key of `position` for a head's noise stream.
  func key(
    position j: Int, positionalDirection: [Float], rng: inout SeededGenerator,
    shared: inout SeededGenerator
  ) -> [Float] {
    let a = c.kindCorrelation
    let b = (1 - a * a).squareRoot()
    var k = (0..<d).map { _ in a * shared.gaussian() + b * rng.gaussian() }
    // Keys vary little along meaning directions, so a strong semantic query does not turn
    // key noise into score noise.
    for i in semantic { k[i] *= Self.semanticNoise }
    for (i, ch) in outliers.enumerated() {
      k[ch] = 0.5 * k[ch] + c.outlierScale * (i % 2 == 0 ? 1 : -1)
    }
    if j < c.sinkTokens { add(&k, sinkDirection, Self.sinkAmplitude) }
    if j < c.contextLength, isHeavy[j] { add(&k, heavyDirection, Self.heavyAmplitude) }
    add(&k, topicDirections[topic(of: min(j, c.contextLength - 1))], Self.topicAmplitude)
    if let needle = needles.firstIndex(of: j) {
      add(&k, needleDirections[needle], Self.needleAmplitude)
    }
    add(&k, positionalDirection, Self.positionalAmplitude)
    rope.apply(&k, position: j)
    return k
  }

  /// Query amplitude that makes a component worth `nats` of score against a key amplitude.
  func amplitude(nats: Float, keyAmplitude: Float) -> Float {
    nats * Float(d).squareRoot() / keyAmplitude
  }

  /// Pre-RoPE query of one query head of a kind at decode step `t` (-1 for the prefill).
  func query(
    kind: SyntheticHeadKind, step t: Int, persistentDirection: [Float],
    positionalDirection: [Float], rng: inout SeededGenerator
  ) -> [Float] {
    let (sigmaP, sigmaS): (Float, Float) =
      switch kind {
      case .sinkLocal: (2.5, 0.3)
      case .heavyHitter: (2.0, 0.4)
      case .topic: (1.2, 1.2)
      case .retrieval: (1.0, 2.0)
      case .diffuse: (1.0, 2.2)
      }
    var q = [Float](repeating: 0, count: d)
    for i in 0..<d where !outlierPairs.contains(i) { q[i] = sigmaS * rng.gaussian() }
    for i in outlierPairs { q[i] = 0.05 * rng.gaussian() }
    add(&q, persistentDirection, sigmaP * Float(d).squareRoot())
    switch kind {
    case .sinkLocal:
      add(&q, sinkDirection, amplitude(nats: 9, keyAmplitude: Self.sinkAmplitude))
      add(&q, positionalDirection, amplitude(nats: 3, keyAmplitude: Self.positionalAmplitude))
    case .heavyHitter:
      add(&q, heavyDirection, amplitude(nats: 5, keyAmplitude: Self.heavyAmplitude))
      add(&q, sinkDirection, amplitude(nats: 5, keyAmplitude: Self.sinkAmplitude))
    case .topic:
      if t >= lateNeedleStep && t < lateNeedleStep + c.driftEvery {
        add(
          &q, needleDirections[c.lateNeedle % c.needles],
          amplitude(nats: 14, keyAmplitude: Self.needleAmplitude))
      } else {
        add(
          &q, topicDirections[followedTopic(step: t)],
          amplitude(nats: 4, keyAmplitude: Self.topicAmplitude))
      }
      add(&q, sinkDirection, amplitude(nats: 3, keyAmplitude: Self.sinkAmplitude))
    case .retrieval:
      if t >= 0 && t % 8 >= 4 {
        let needle = (t / 8) % c.needles
        add(&q, needleDirections[needle], amplitude(nats: 14, keyAmplitude: Self.needleAmplitude))
      }
      add(&q, sinkDirection, amplitude(nats: 2, keyAmplitude: Self.sinkAmplitude))
    case .diffuse:
      add(&q, sinkDirection, amplitude(nats: 2, keyAmplitude: Self.sinkAmplitude))
    }
    return q
  }

  func unitVector(in range: Range<Int>, excluding: [Int], rng: inout SeededGenerator) -> [Float] {
    Self.unitVector(dim: d, in: range, excluding: excluding, rng: &rng)
  }

  /// `count` orthonormal vectors supported on `range` (Gram-Schmidt on Gaussian draws).
  static func orthonormal(count: Int, dim d: Int, in range: Range<Int>, rng: inout SeededGenerator)
    -> [[Float]]
  {
    var basis: [[Float]] = []
    for _ in 0..<count {
      var v = unitVector(dim: d, in: range, excluding: [], rng: &rng)
      for b in basis {
        let p = zip(v, b).reduce(0) { $0 + $1.0 * $1.1 }
        for i in 0..<d { v[i] -= p * b[i] }
      }
      let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
      basis.append(v.map { $0 / norm })
    }
    return basis
  }

  static func unitVector(
    dim d: Int, in range: Range<Int>, excluding: [Int], rng: inout SeededGenerator
  )
    -> [Float]
  {
    var v = [Float](repeating: 0, count: d)
    for i in range where !excluding.contains(i) { v[i] = rng.gaussian() }
    let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
    return v.map { $0 / norm }
  }

  func head(_ h: Int) -> HeadTrace {
    let n = c.contextLength
    let g = c.geometry.groupSize
    let kind = kinds[h]
    // Model facts of this head.
    let kindIndex = UInt64(SyntheticHeadKind.allCases.firstIndex(of: kind)!)
    var model = SeededGenerator(seed: c.modelSeed, stream: [0x6865_6164, UInt64(layer), UInt64(h)])
    var kindModel = SeededGenerator(
      seed: c.modelSeed, stream: [0x6B69_6E64, UInt64(layer), kindIndex])
    let a = c.kindCorrelation
    let b = (1 - a * a).squareRoot()
    let positionalDirection = unitVector(in: positional, excluding: [], rng: &model)
    let kindPreference = unitVector(in: persistent, excluding: outlierPairs, rng: &kindModel)
    let headPreference = unitVector(in: persistent, excluding: outlierPairs, rng: &model)
    let shared = zip(kindPreference, headPreference).map { a * $0 + b * $1 }
    let persistentDirections: [[Float]] = (0..<g).map { _ in
      let own = unitVector(in: persistent, excluding: outlierPairs, rng: &model)
      return zip(shared, own).map { 0.8 * $0 + 0.6 * $1 }
    }
    let meanValue = unitVector(in: 0..<d, excluding: [], rng: &model).map {
      $0 * c.valueMean * Float(d).squareRoot()
    }
    // Sample noise: the head's own stream and the stream its kind shares in this layer.
    var rng = SeededGenerator(
      seed: c.sampleSeed, stream: [UInt64(c.modelSeed), UInt64(layer), UInt64(h)])
    var sharedNoise = SeededGenerator(
      seed: c.sampleSeed, stream: [UInt64(c.modelSeed), UInt64(layer), 0x5348, kindIndex])
    var keys = [Float]()
    keys.reserveCapacity(n * d)
    var values = [Float]()
    values.reserveCapacity(n * d)
    for j in 0..<n {
      keys.append(
        contentsOf: key(
          position: j, positionalDirection: positionalDirection, rng: &rng, shared: &sharedNoise))
      for i in 0..<d { values.append(meanValue[i] + rng.gaussian()) }
    }
    func group(step t: Int, position p: Int) -> [Float] {
      var out = [Float]()
      for qh in 0..<g {
        var q = query(
          kind: kind, step: t, persistentDirection: persistentDirections[qh],
          positionalDirection: positionalDirection, rng: &rng)
        rope.apply(&q, position: p)
        out.append(contentsOf: q)
      }
      return out
    }
    var observation = [Float]()
    for p in (n - c.observationWindow)..<n {
      observation.append(contentsOf: group(step: -1, position: p))
    }
    var dq: [[Float]] = []
    var dk: [[Float]] = []
    var dv: [[Float]] = []
    for t in 0..<c.decodeSteps {
      let p = n + t
      dk.append(
        key(position: p, positionalDirection: positionalDirection, rng: &rng, shared: &sharedNoise))
      dv.append((0..<d).map { meanValue[$0] + rng.gaussian() })
      dq.append(group(step: t, position: p))
    }
    return HeadTrace(
      keys: try! HalfMatrix(keys, cols: d), values: try! HalfMatrix(values, cols: d),
      observationQueries: observation, decodeQueries: dq, decodeKeys: dk, decodeValues: dv)
  }
}
