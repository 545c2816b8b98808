/// Fidelity of one policy's outputs against full attention, accumulated over heads and steps.
public struct FidelityAccumulator: Sendable {
  public private(set) var samples = 0
  var relativeErrorSum = 0.0
  var cosineSum = 0.0
  var recallSum = 0.0
  var keptFractionSum = 0.0
  var bytesMoved = 0

  public init() {}

  /// Adds one step of one KV head: outputs `[heads][d]` against the reference, the true
  /// probabilities `[heads][n]`, and the attended sets (nil: every token).
  public mutating func add(
    outputs: [Float], reference: [Float], probabilities: [Float], attended: [[Int32]]?,
    heads: Int, bytesMoved: Int
  ) {
    let d = reference.count / heads
    let n = probabilities.count / heads
    for h in 0..<heads {
      let o = outputs[h * d..<(h + 1) * d]
      let r = reference[h * d..<(h + 1) * d]
      relativeErrorSum += Double(Self.relativeL2(o, r))
      cosineSum += Double(Self.cosine(o, r))
      if let attended {
        var mass: Float = 0
        for j in attended[h] { mass += probabilities[h * n + Int(j)] }
        recallSum += Double(min(mass, 1))
        keptFractionSum += Double(attended[h].count) / Double(n)
      } else {
        recallSum += 1
        keptFractionSum += 1
      }
      samples += 1
    }
    self.bytesMoved += bytesMoved
  }

  /// ‖a − b‖ / ‖b‖.
  public static func relativeL2(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
    var num: Float = 0
    var den: Float = 0
    for (x, y) in zip(a, b) {
      num += (x - y) * (x - y)
      den += y * y
    }
    return (num / max(den, 1e-30)).squareRoot()
  }

  /// a·b / (‖a‖‖b‖).
  public static func cosine(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
    var ab: Float = 0
    var aa: Float = 0
    var bb: Float = 0
    for (x, y) in zip(a, b) {
      ab += x * y
      aa += x * x
      bb += y * y
    }
    return ab / max((aa * bb).squareRoot(), 1e-30)
  }

  public var meanRelativeError: Double { samples > 0 ? relativeErrorSum / Double(samples) : 0 }
  public var meanCosine: Double { samples > 0 ? cosineSum / Double(samples) : 0 }
  public var meanMassRecall: Double { samples > 0 ? recallSum / Double(samples) : 0 }
  public var meanKeptFraction: Double { samples > 0 ? keptFractionSum / Double(samples) : 0 }
  public var totalBytesMoved: Int { bytesMoved }
}
