/// KIVI-style quantized cache with full attention: keys per-channel over token groups, values
/// per-token over channel groups, both at `bits`, with a full-precision window of recent
/// tokens. The bit width follows the budget: 4 bits at 25%, 2 bits at 12.5%.
public struct KIVIPolicy: AttentionPolicy {
  public var groupSize: Int
  public var window: Int
  public init(groupSize: Int = 32, window: Int = 128) {
    self.groupSize = groupSize
    self.window = window
  }
  public var name: String { "kivi" }

  /// The bit width that fits a budget, or nil when even 2 bits do not.
  public static func bits(forBudget budget: Double) -> Int? {
    [8, 4, 2].first { Double($0) / 16 <= budget + 1e-9 }
  }

  struct Head: HeadPolicyState {
    var keys: ScalarQuantizedKeyStore
    /// Values as the quantized codes decode (fp16), and their packed size.
    var values: HalfMatrix
    var packedValueBytes = 0
    var pending: [Float] = []
    let bits: Int
    let groupSize: Int
    let window: Int
    let d: Int
    let heads: Int

    mutating func appendValues(_ rows: [Float]) throws {
      pending += rows
      let flush = pending.count / d - window
      guard flush > 0 else { return }
      var quantized = [Float]()
      quantized.reserveCapacity(flush * d)
      for t in 0..<flush {
        quantized += Self.quantizePerToken(
          Array(pending[t * d..<(t + 1) * d]), bits: bits, group: groupSize)
      }
      pending.removeFirst(flush * d)
      try values.append(quantized)
      packedValueBytes += flush * (d * bits / 8 + (d / groupSize) * 4)
    }

    static func quantizePerToken(_ row: [Float], bits: Int, group: Int) -> [Float] {
      let levels = Float((1 << bits) - 1)
      var out = row
      for start in stride(from: 0, to: row.count, by: group) {
        let slice = row[start..<min(row.count, start + group)]
        let lo = slice.min()!
        let hi = slice.max()!
        let step = (hi - lo) / levels
        for i in slice.indices {
          out[i] = step > 0 ? lo + step * ((row[i] - lo) / step).rounded() : lo
        }
      }
      return out
    }

    mutating func step(_ input: HeadStepInput) throws -> PolicyStepResult {
      let newest = input.keys.rows - 1
      try keys.append(input.keys.gather([newest]))
      try appendValues(input.values.row(newest))
      let scale = FullAttention.scale(headDim: d)
      var p = try keys.scores(queries: input.queries, heads: heads, scale: scale)
      let n = keys.count
      _ = Softmax.normalizeRows(&p, heads: heads, n: n)
      // Quantized rows and the fp16 window are summed separately, each with its slice of
      // the probabilities, rather than copying the value matrix every step.
      let quantized = values.rows
      let probabilities = p
      let headCount = heads
      func slice(_ range: (Int) -> Range<Int>) -> [Float] {
        (0..<headCount).flatMap { probabilities[range($0)] }
      }
      var out = Kernels.weightedSum(
        values: values, probabilities: slice { $0 * n..<$0 * n + quantized }, heads: heads)
      if n > quantized {
        let tail = Kernels.weightedSum(
          values: try HalfMatrix(pending, cols: d),
          probabilities: slice { $0 * n + quantized..<($0 + 1) * n }, heads: heads)
        for i in out.indices { out[i] += tail[i] }
      }
      return PolicyStepResult(outputs: out, attended: nil, bytesMoved: 0)
    }

    var residentBytes: Int { keys.residentBytes + packedValueBytes + pending.count * 2 }
  }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    guard let bits = Self.bits(forBudget: budget) else {
      throw HeteroKVError.unsupported(
        "kivi has no configuration within a \(budget) memory budget (2 bits need 0.125)")
    }
    let config = try ScalarQuantizerConfiguration(bits: bits, groupSize: groupSize, window: window)
    return try IndependentHeads(
      layer.heads.map { head in
        var h = Head(
          keys: try ScalarQuantizedKeyStore(headDim: geometry.headDim, configuration: config),
          values: HalfMatrix(cols: geometry.headDim), bits: bits, groupSize: groupSize,
          window: window, d: geometry.headDim, heads: geometry.groupSize)
        try h.keys.append(head.keys)
        try h.appendValues(head.values.floats())
        return h
      })
  }
}
