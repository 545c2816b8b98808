import Testing

@testable import HeteroKVCore

@Suite struct WorkloadTests {
  static func small(context: Int = 4096, steps: Int = 24) throws -> SyntheticWorkload {
    var c = SyntheticWorkloadConfiguration(geometry: .llama3_8B)
    c.layers = 1
    c.contextLength = context
    c.decodeSteps = steps
    return try SyntheticWorkload(c)
  }

  @Test func generationIsDeterministicBySeed() throws {
    let a = try Self.small(context: 256, steps: 2).layer(0)
    let b = try Self.small(context: 256, steps: 2).layer(0)
    #expect(a.heads[3].keys == b.heads[3].keys)
    #expect(a.heads[3].decodeQueries == b.heads[3].decodeQueries)
    var c = try Self.small(context: 256, steps: 2).configuration
    c.sampleSeed = 99
    #expect(try SyntheticWorkload(c).layer(0).heads[3].keys != a.heads[3].keys)
  }

  @Test func keysHaveOutlierChannelsAndSinksDrawAttention() throws {
    let w = try Self.small(context: 2048, steps: 1)
    let layer = try w.layer(0)
    let kinds = w.headKinds(layer: 0)
    let head = layer.heads[kinds.firstIndex(of: .sinkLocal)!]
    let k = head.keys.floats()
    let d = 128
    // Channel magnitudes before RoPE mixing within a pair: the pair energy of outlier pairs.
    var energy = [Float](repeating: 0, count: d / 2)
    for j in 0..<head.keys.rows {
      for i in 0..<d / 2 {
        energy[i] +=
          k[j * d + 2 * i] * k[j * d + 2 * i] + k[j * d + 2 * i + 1] * k[j * d + 2 * i + 1]
      }
    }
    let sorted = energy.sorted()
    #expect(
      sorted.last! > 50 * sorted[sorted.count / 2], "outlier pairs carry 10-20x the magnitude")
    let p = try FullAttention.probabilities(
      queries: head.decodeQueries[0], heads: 4, keys: head.keys)
    let sinkMass = (0..<4).reduce(Float(0)) { $0 + p[$1] }
    #expect(sinkMass > 0.2)
  }

  @Test func retrievalHeadsFindThePlantedNeedle() throws {
    let w = try Self.small(context: 4096, steps: 8)
    let layer = try w.layer(0)
    let h = w.headKinds(layer: 0).firstIndex(of: .retrieval)!
    // Steps 4..<8 ask for needle 0.
    var keys = layer.heads[h].keys
    for t in 0..<5 { try keys.append(layer.heads[h].decodeKeys[t]) }
    let p = try FullAttention.probabilities(
      queries: layer.heads[h].decodeQueries[4], heads: 4, keys: keys)
    let needle = w.needlePositions[0]
    #expect(p[needle] > 0.3)
  }

  @Test func profilesMatchPlantedHeadKinds() throws {
    let w = try Self.small()
    var config = HeteroCacheConfiguration()
    config.topK = 256
    let profiles = try HeteroCacheCalibration.profile(w, configuration: config)
    let kinds = w.headKinds(layer: 0)
    func isVolatile(_ h: Int) -> Bool { profiles[h].role == .volatile }
    func starOf(_ h: Int) -> Int? {
      switch profiles[h].role {
      case .pivot: h
      case .satellite(let p): p
      default: nil
      }
    }
    for h in kinds.indices {
      switch kinds[h] {
      case .retrieval: #expect(isVolatile(h), "retrieval head \(h) is volatile")
      case .heavyHitter, .sinkLocal: #expect(!isVolatile(h), "stable head \(h) is not volatile")
      case .topic, .diffuse: break
      }
      if kinds[h] == .heavyHitter || kinds[h] == .sinkLocal {
        #expect(profiles[h].stability >= 0.5)
      } else {
        #expect(profiles[h].stability < 0.5)
      }
    }
    // Topic heads move together: one star holds all of them.
    let topics = kinds.indices.filter { kinds[$0] == .topic }
    let stars = Set(topics.map(starOf))
    #expect(stars.count == 1 && stars.first! != nil, "topic heads share one star: \(stars)")
  }

  @Test func badConfigurationsAreTypedErrors() {
    var c = SyntheticWorkloadConfiguration(geometry: .llama3_8B)
    c.contextLength = 10
    #expect(throws: HeteroKVError.self) { try SyntheticWorkload(c) }
    c = SyntheticWorkloadConfiguration(geometry: .llama3_8B)
    c.layers = 40
    #expect(throws: HeteroKVError.self) { try SyntheticWorkload(c) }
  }
}
