import Foundation

/// Rotary position embedding on adjacent channel pairs (2i, 2i+1), angle position·θ_i with
/// θ_i = base^(−2i/d), as the Llama GGUF layout applies it.
public struct RotaryEmbedding: Sendable {
  public let headDim: Int
  public let base: Double
  let frequencies: [Double]

  public init(headDim: Int, base: Double) {
    self.headDim = headDim
    self.base = base
    self.frequencies = (0..<headDim / 2).map { pow(base, -2 * Double($0) / Double(headDim)) }
  }

  /// θ_i of pair i.
  public func frequency(pair: Int) -> Double { frequencies[pair] }

  /// Rotates `vector` (one head, `headDim` values starting at `offset`) to `position`.
  public func apply(_ vector: inout [Float], offset: Int = 0, position: Int) {
    for i in 0..<headDim / 2 {
      let angle = Double(position) * frequencies[i]
      let c = Float(cos(angle))
      let s = Float(sin(angle))
      let a = vector[offset + 2 * i]
      let b = vector[offset + 2 * i + 1]
      vector[offset + 2 * i] = a * c - b * s
      vector[offset + 2 * i + 1] = a * s + b * c
    }
  }
}
