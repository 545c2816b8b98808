import Foundation

/// A small deterministic random generator (SplitMix64) so that workloads, k-means sampling and
/// tests reproduce exactly from a seed on every platform.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
  private var state: UInt64

  /// A generator whose sequence is fixed by `seed`.
  public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

  /// A generator derived from a seed and a list of stream identifiers (layer, head, ...).
  public init(seed: UInt64, stream: [UInt64]) {
    var s = seed
    for id in stream { s = SeededGenerator.mix(s ^ (id &* 0xD1B5_4A32_D192_ED03)) }
    self.init(seed: s)
  }

  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    return SeededGenerator.mix(state)
  }

  private static func mix(_ x: UInt64) -> UInt64 {
    var z = x
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// A uniform value in [0, 1).
  public mutating func unit() -> Float { Float(next() >> 40) / Float(1 << 24) }

  /// A standard normal value (Box-Muller).
  public mutating func gaussian() -> Float {
    let u1 = max(unit(), 1e-7)
    let u2 = unit()
    return (-2 * _log(u1)).squareRoot() * _cos(2 * Float.pi * u2)
  }
}

@usableFromInline func _log(_ x: Float) -> Float { Float(log(Double(x))) }
@usableFromInline func _cos(_ x: Float) -> Float { Float(cos(Double(x))) }
