/// The attention shape of a model: how many layers, query heads and key/value heads (GQA),
/// and the head dimension. Every buffer in HeteroKV is sized from one of these.
public struct ModelGeometry: Sendable, Hashable, Codable, CustomStringConvertible {
  /// A short name used in reports and codebook versions.
  public var name: String
  /// Transformer layers.
  public var layers: Int
  /// Query heads per layer.
  public var queryHeads: Int
  /// Key/value heads per layer; `queryHeads` is a multiple of it.
  public var kvHeads: Int
  /// Dimension of one head's query, key and value vectors.
  public var headDim: Int

  /// Creates a geometry, checking that the numbers describe a valid GQA layout.
  public init(name: String, layers: Int, queryHeads: Int, kvHeads: Int, headDim: Int) throws {
    guard layers > 0, queryHeads > 0, kvHeads > 0, headDim > 0 else {
      throw HeteroKVError.invalid(
        "geometry \(name): layers, heads and head dim must be positive "
          + "(got \(layers), \(queryHeads), \(kvHeads), \(headDim))")
    }
    guard queryHeads % kvHeads == 0 else {
      throw HeteroKVError.dimension(
        "geometry \(name): \(queryHeads) query heads is not a multiple of \(kvHeads) KV heads")
    }
    guard headDim % 2 == 0 else {
      throw HeteroKVError.dimension("geometry \(name): head dim \(headDim) must be even for RoPE")
    }
    self.name = name
    self.layers = layers
    self.queryHeads = queryHeads
    self.kvHeads = kvHeads
    self.headDim = headDim
  }

  /// Query heads that share one KV head.
  public var groupSize: Int { queryHeads / kvHeads }

  /// Bytes of fp16 keys and values for one token across all layers and KV heads.
  public var fp16KVBytesPerToken: Int { layers * kvHeads * headDim * 2 * 2 }

  /// The same geometry restricted to its first `count` layers.
  public func withLayers(_ count: Int) throws -> ModelGeometry {
    try ModelGeometry(
      name: name, layers: count, queryHeads: queryHeads, kvHeads: kvHeads, headDim: headDim)
  }

  public var description: String {
    "\(name) (\(layers) layers, \(queryHeads) q heads, \(kvHeads) KV heads, dim \(headDim))"
  }

  /// Llama-3-8B: 32 layers, 32 query heads, 8 KV heads, head dim 128.
  public static let llama3_8B = try! ModelGeometry(
    name: "llama-3-8b", layers: 32, queryHeads: 32, kvHeads: 8, headDim: 128)
  /// Qwen2.5-7B: 28 layers, 28 query heads, 4 KV heads, head dim 128.
  public static let qwen2_5_7B = try! ModelGeometry(
    name: "qwen2.5-7b", layers: 28, queryHeads: 28, kvHeads: 4, headDim: 128)
  /// SmolLM2-135M: 30 layers, 9 query heads, 3 KV heads, head dim 64.
  public static let smolLM2_135M = try! ModelGeometry(
    name: "smollm2-135m", layers: 30, queryHeads: 9, kvHeads: 3, headDim: 64)

  /// Every preset, by name.
  public static let presets: [ModelGeometry] = [llama3_8B, qwen2_5_7B, smolLM2_135M]

  /// Looks a preset up by name (`llama-3-8b`, `qwen2.5-7b`, `smollm2-135m`).
  public static func preset(named name: String) throws -> ModelGeometry {
    guard let g = presets.first(where: { $0.name == name.lowercased() }) else {
      throw HeteroKVError.invalid(
        "unknown geometry preset '\(name)'; known: \(presets.map(\.name).joined(separator: ", "))")
    }
    return g
  }
}
