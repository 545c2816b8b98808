import Foundation
import HeteroKVCore

/// The attention geometry of a Hugging Face transformers `config.json`: what HeteroKV holds
/// of that model.
///
/// Only the layers the config marks `full_attention` (every layer where it has no
/// `layer_types`) keep their K/V in HeteroKV; sliding-window layers stay in the engine. The
/// geometry's `layers` is the count of those full-attention layers, in model order.
public struct TransformersModelConfig: Sendable, Hashable {
  /// The geometry HeteroKV is configured with (full-attention layers only).
  public var geometry: ModelGeometry
  /// Model layer index of each HeteroKV layer, ascending.
  public var fullAttentionLayers: [Int]

  /// Reads the text of `config.json` (`file` names it in errors); a missing or inconsistent
  /// field is an error naming its key.
  public init(json: Data, file: String = "config.json") throws(ConfigurationError) {
    func problem(_ key: String, _ message: String) -> ConfigurationError {
      ConfigurationError(problems: [
        ConfigurationProblem(file: file, keyPath: key, line: nil, message: message)
      ])
    }
    guard let parsed = try? JSONSerialization.jsonObject(with: json),
      let object = parsed as? [String: Any]
    else {
      throw problem("", "a transformers config.json holds one JSON object")
    }
    // Multimodal configs nest the language model's under text_config.
    let config = (object["text_config"] as? [String: Any]) ?? object
    func integer(_ key: String) -> Int? { (config[key] as? NSNumber)?.intValue }
    guard let layers = integer("num_hidden_layers"), layers > 0 else {
      throw problem("num_hidden_layers", "a positive integer is required")
    }
    guard let queryHeads = integer("num_attention_heads"), queryHeads > 0 else {
      throw problem("num_attention_heads", "a positive integer is required")
    }
    let kvHeads = integer("num_key_value_heads") ?? queryHeads
    let headDim: Int
    if let explicit = integer("head_dim") {
      headDim = explicit
    } else if let hidden = integer("hidden_size"), hidden % queryHeads == 0 {
      headDim = hidden / queryHeads
    } else {
      throw problem(
        "head_dim", "missing, and no hidden_size that num_attention_heads (\(queryHeads)) divides")
    }
    var full = Array(0..<layers)
    if let types = config["layer_types"] as? [String] {
      guard types.count == layers else {
        throw problem(
          "layer_types", "lists \(types.count) layers, num_hidden_layers is \(layers)")
      }
      full = types.indices.filter { types[$0] == "full_attention" }
      guard !full.isEmpty else {
        throw problem("layer_types", "no layer is full_attention")
      }
    }
    let name =
      (object["_name_or_path"] as? String).flatMap { $0.isEmpty ? nil : $0 }
      ?? (config["model_type"] as? String) ?? "custom"
    do {
      geometry = try ModelGeometry(
        name: name, layers: full.count, queryHeads: queryHeads, kvHeads: kvHeads,
        headDim: headDim)
    } catch {
      throw problem("num_key_value_heads", "\(error)")
    }
    fullAttentionLayers = full
  }
}
