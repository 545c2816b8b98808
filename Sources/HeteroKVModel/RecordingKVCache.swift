import HeteroKVCore

/// A full cache that also records what attention saw, layer by layer: the prefill's keys,
/// values and last queries, and each decode step's query, key and value (queries and keys
/// after RoPE). `hkv trace` writes it in the trace format so `hkv eval --trace` measures every
/// policy on the model's real attention.
public struct RecordingKVCache: ModelKVCache {
  var cache: FullKVCache
  let configuration: LlamaConfiguration
  /// Query rows of the prefill kept per layer.
  public let window: Int
  var prefillQueries: [[Float]]
  var decodeQueries: [[[Float]]]
  var decodeKeys: [[[Float]]]
  var decodeValues: [[[Float]]]

  public init(configuration c: LlamaConfiguration, window: Int = 32) {
    cache = FullKVCache(configuration: c)
    configuration = c
    self.window = window
    prefillQueries = Array(repeating: [], count: c.layers)
    decodeQueries = Array(repeating: [], count: c.layers)
    decodeKeys = decodeQueries
    decodeValues = decodeQueries
  }

  public mutating func appendAndAttend(
    layer: Int, keys: [Float], values: [Float], queries: [Float], tokens: Int
  ) async throws -> [Float] {
    let width = configuration.queryHeads * configuration.headDim
    if decodeQueries[layer].isEmpty && (tokens > 1 || prefillQueries[layer].isEmpty) {
      prefillQueries[layer] = Array((prefillQueries[layer] + queries).suffix(window * width))
    } else {
      decodeQueries[layer].append(queries)
      decodeKeys[layer].append(keys)
      decodeValues[layer].append(values)
    }
    return try await cache.appendAndAttend(
      layer: layer, keys: keys, values: values, queries: queries, tokens: tokens)
  }

  /// What was recorded, as an attention workload.
  public func workload(name: String) throws -> any AttentionWorkload {
    let c = configuration
    let n = cache.count - decodeQueries[0].count
    return RecordedAttention(
      geometry: try ModelGeometry(
        name: name, layers: c.layers, queryHeads: c.queryHeads, kvHeads: c.kvHeads,
        headDim: c.headDim),
      contextLength: n, decodeSteps: decodeQueries[0].count,
      observationWindow: prefillQueries[0].count / (c.queryHeads * c.headDim),
      keys: cache.keys, values: cache.values, prefillQueries: prefillQueries,
      decodeQueries: decodeQueries, decodeKeys: decodeKeys, decodeValues: decodeValues)
  }
}

/// Attention recorded from a model run, as an `AttentionWorkload`.
struct RecordedAttention: AttentionWorkload {
  let geometry: ModelGeometry
  let contextLength: Int
  let decodeSteps: Int
  let observationWindow: Int
  let keys: [[HalfMatrix]]
  let values: [[HalfMatrix]]
  let prefillQueries: [[Float]]
  let decodeQueries: [[[Float]]]
  let decodeKeys: [[[Float]]]
  let decodeValues: [[[Float]]]

  var summary: String {
    "\(geometry.name) recorded, \(contextLength) tokens, \(decodeSteps) decode steps"
  }

  func calibrationSample() throws -> (any AttentionWorkload)? { nil }

  func layer(_ l: Int) throws -> LayerTrace {
    let g = geometry
    let d = g.headDim
    let group = g.groupSize
    let n = contextLength
    let heads = (0..<g.kvHeads).map { h in
      // Queries [rows][Hq][d] -> this head's group [rows][group][d].
      func groupRows(_ q: [Float]) -> [Float] {
        let rows = q.count / (g.queryHeads * d)
        var out: [Float] = []
        for r in 0..<rows {
          let from = (r * g.queryHeads + h * group) * d
          out += q[from..<(from + group * d)]
        }
        return out
      }
      return HeadTrace(
        keys: keys[l][h].gather(Array(0..<n)), values: values[l][h].gather(Array(0..<n)),
        observationQueries: groupRows(prefillQueries[l]),
        decodeQueries: decodeQueries[l].map(groupRows),
        decodeKeys: decodeKeys[l].map { Array($0[(h * d)..<((h + 1) * d)]) },
        decodeValues: decodeValues[l].map { Array($0[(h * d)..<((h + 1) * d)]) })
    }
    return LayerTrace(layer: l, heads: heads)
  }
}
