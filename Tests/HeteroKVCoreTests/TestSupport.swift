import HeteroKVCore

/// Random fp32 values from a fixed seed.
func randomFloats(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
  var rng = SeededGenerator(seed: seed)
  return (0..<count).map { _ in rng.gaussian() * scale }
}

func randomMatrix(rows: Int, cols: Int, seed: UInt64, scale: Float = 1) throws -> HalfMatrix {
  try HalfMatrix(randomFloats(rows * cols, seed: seed, scale: scale), cols: cols)
}

func relativeError(_ a: [Float], _ b: [Float]) -> Float {
  FidelityAccumulator.relativeL2(a[...], b[...])
}

func dot(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
