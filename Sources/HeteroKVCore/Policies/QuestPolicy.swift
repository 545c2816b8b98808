/// Quest with its pages offloaded: the worker keeps per-page channel-wise min and max of the
/// keys; each step every query head bounds each page's best score, takes the top pages up to
/// the token budget, and attends exactly over them. Pages travel, metadata stays.
public struct QuestPolicy: AttentionPolicy {
  public var pageSize: Int
  public init(pageSize: Int = 16) { self.pageSize = pageSize }
  public var name: String { "quest" }

  struct Head: HeadPolicyState {
    let pageSize: Int
    let d: Int
    let groupSize: Int
    let tokenBudget: Int
    var mins: [Float] = []
    var maxs: [Float] = []
    var tokens = 0

    var fullPages: Int { mins.count / d }

    mutating func index(_ keys: HalfMatrix) {
      while (fullPages + 1) * pageSize <= keys.rows {
        let start = fullPages * pageSize
        var lo = [Float](repeating: .infinity, count: d)
        var hi = [Float](repeating: -.infinity, count: d)
        for t in start..<start + pageSize {
          let row = keys.row(t)
          for c in 0..<d {
            lo[c] = min(lo[c], row[c])
            hi[c] = max(hi[c], row[c])
          }
        }
        mins += lo
        maxs += hi
      }
      tokens = keys.rows
    }

    mutating func step(_ input: HeadStepInput) throws -> PolicyStepResult {
      index(input.keys)
      let pages = fullPages
      let tail = Array(pages * pageSize..<input.keys.rows)
      let budgetPages = max(0, (tokenBudget - tail.count) / pageSize)
      var outputs = [Float]()
      var attended: [[Int32]] = []
      var fetched = Set<Int>()
      for h in 0..<groupSize {
        let q = input.queries[h * d..<(h + 1) * d]
        var bound = [Float](repeating: 0, count: pages)
        for p in 0..<pages {
          var s: Float = 0
          for c in 0..<d {
            let qc = q[q.startIndex + c]
            s += max(qc * mins[p * d + c], qc * maxs[p * d + c])
          }
          bound[p] = s
        }
        let chosen = AttentionPattern.top(bound, k: budgetPages)
        fetched.formUnion(chosen)
        let positions = chosen.flatMap { Array($0 * pageSize..<($0 + 1) * pageSize) } + tail
        let part = try FullAttention.attend(
          queries: Array(q), heads: 1, keys: input.keys.gather(positions),
          values: input.values.gather(positions))
        outputs += part.outputs
        attended.append(positions.map(Int32.init))
      }
      return PolicyStepResult(
        outputs: outputs, attended: attended,
        bytesMoved: kvBytes(tokens: fetched.count * pageSize, headDim: d))
    }

    /// Page bounds (fp16 in a deployment) plus the partial page kept in fp16.
    var residentBytes: Int {
      mins.count * 2 * 2 + kvBytes(tokens: tokens - fullPages * pageSize, headDim: d)
    }
  }

  public func prepare(layer: LayerTrace, geometry: ModelGeometry, budget: Double) throws
    -> any PolicyLayerState
  {
    try IndependentHeads(
      layer.heads.map { head in
        var h = Head(
          pageSize: pageSize, d: geometry.headDim, groupSize: geometry.groupSize,
          tokenBudget: try tokenBudget(budget, contextLength: head.keys.rows))
        h.index(head.keys)
        return h
      })
  }
}
