/// A compressed cache of one KV head (anchor or satellite): the K/V rows of chosen positions,
/// kept in position order, plus the tokens appended during decode. Attention over it is exact.
///
/// With a `capacity` the cache holds its budget through decode: the budget is a share of the
/// context, so it grows by `growth` rows per appended token (the head's cap over the prefill);
/// each row carries the attention mass it has drawn (its observation votes, then every step's
/// probabilities), and an append past the capacity evicts the row with the least mass, never
/// a sink or a recent row.
public struct CompressedHeadCache: Sendable {
  /// Positions held, ascending.
  public private(set) var positions: [Int]
  public private(set) var keys: HalfMatrix
  public private(set) var values: HalfMatrix
  /// Attention mass each row has drawn, summed over the query group; row order.
  public private(set) var mass: [Float]
  /// Most rows held after an append; nil: the cache grows by every decode token.
  public var capacity: Int? { base.map { $0 + Int(growth * Double(appended)) } }
  /// The capacity when the budget was set, what it grows by per token, and tokens since.
  private var base: Int?
  private var growth = 0.0
  private var appended = 0
  /// Positions below this are attention sinks: never evicted.
  public private(set) var sinks = 0
  /// The newest this many rows are never evicted (they have had no time to draw mass).
  public private(set) var recent = 0

  /// Gathers `positions` (any order; stored sorted) from the full K/V.
  public init(positions: [Int], keys: HalfMatrix, values: HalfMatrix) throws {
    let sorted = Array(Set(positions)).sorted()
    if let bad = sorted.first(where: { $0 < 0 || $0 >= keys.rows }) {
      throw HeteroKVError.invalid("cache position \(bad) is outside the \(keys.rows) tokens")
    }
    self.positions = sorted
    self.keys = keys.gather(sorted)
    self.values = values.gather(sorted)
    self.mass = [Float](repeating: 0, count: sorted.count)
  }

  /// A cache from rows already gathered: row i of `keys` and `values` holds `positions[i]`,
  /// and positions ascend. `mass` (one per row, default 0) seeds the eviction order.
  public init(positions: [Int], rows keys: HalfMatrix, values: HalfMatrix, mass: [Float]? = nil)
    throws
  {
    guard keys.rows == positions.count, values.rows == positions.count, keys.cols == values.cols
    else {
      throw HeteroKVError.dimension(
        "\(positions.count) positions for \(keys.rows) key and \(values.rows) value rows")
    }
    guard zip(positions, positions.dropFirst()).allSatisfy({ $0 < $1 }) else {
      throw HeteroKVError.invalid("cache positions must ascend")
    }
    if let mass, mass.count != positions.count {
      throw HeteroKVError.dimension("\(mass.count) mass values for \(positions.count) rows")
    }
    self.positions = positions
    self.keys = keys
    self.values = values
    self.mass = mass ?? [Float](repeating: 0, count: positions.count)
  }

  /// Holds the cache to `capacity` rows, plus `growth` rows per token appended from now on,
  /// protecting positions below `sinks` and the newest `recent` rows; rows past it now are
  /// evicted at once.
  public mutating func holdBudget(capacity: Int, growth: Double = 0, sinks: Int, recent: Int) {
    base = max(1, capacity)
    self.growth = max(0, growth)
    appended = 0
    self.sinks = max(0, sinks)
    self.recent = max(0, recent)
    evictToCapacity()
  }

  /// This cache's rows from `position` on appended to `refreshed`, whose positions must all
  /// lie before it: a refresh replaces what was chosen at prefill and keeps the decoded tokens.
  /// The result keeps this cache's budget.
  public func keepingRows(from position: Int, after refreshed: CompressedHeadCache) throws
    -> CompressedHeadCache
  {
    if let last = refreshed.positions.last, last >= position {
      throw HeteroKVError.invalid("refreshed position \(last) is not before \(position)")
    }
    let start = positions.firstIndex { $0 >= position } ?? positions.count
    var result = refreshed
    // Refreshed rows without a standing of their own take the mean of the rows they replace.
    if !result.mass.isEmpty, result.mass.allSatisfy({ $0 == 0 }), start > 0 {
      let mean = mass[..<start].reduce(0, +) / Float(start)
      result.mass = [Float](repeating: mean, count: result.mass.count)
    }
    let tail = Array(start..<positions.count)
    try result.keys.append(contentsOf: keys.gather(tail))
    try result.values.append(contentsOf: values.gather(tail))
    result.positions += positions[start...]
    result.mass += mass[start...]
    if let capacity {
      result.holdBudget(capacity: capacity, growth: growth, sinks: sinks, recent: recent)
    }
    return result
  }

  /// The top-`cap` positions of a score row (one value per token).
  public static func topPositions(_ scores: [Float], cap: Int) -> [Int] {
    AttentionPattern.top(scores, k: cap)
  }

  /// Bytes of fp16 K and V held.
  public var residentBytes: Int { keys.byteCount + values.byteCount }

  /// Appends a decode token, evicting the least-attended row when the cache is at its
  /// capacity; on bad input nothing changes.
  public mutating func append(key: [Float], value: [Float], position: Int) throws {
    guard key.count == keys.cols, value.count == values.cols else {
      throw HeteroKVError.dimension(
        "cache row needs \(keys.cols) dims, got key \(key.count) and value \(value.count)")
    }
    try requireFinite(key, "appended key")
    try requireFinite(value, "appended value")
    if let last = positions.last, position <= last {
      throw HeteroKVError.invalid("appended position \(position) is not after \(last)")
    }
    try keys.append(key)
    try values.append(value)
    positions.append(position)
    mass.append(0)
    appended += 1
    evictToCapacity()
  }

  /// Evicts least-mass rows outside the sinks and the recent rows until the capacity holds
  /// (or nothing is evictable).
  mutating func evictToCapacity() {
    guard let capacity else { return }
    while positions.count > capacity {
      let end = positions.count - recent
      var victim = -1
      var least = Float.infinity
      var i = 0
      while i < end {
        if positions[i] >= sinks && mass[i] < least {
          least = mass[i]
          victim = i
        }
        i += 1
      }
      guard victim >= 0 else { return }
      positions.remove(at: victim)
      mass.remove(at: victim)
      keys.removeRow(at: victim)
      values.removeRow(at: victim)
    }
  }

  /// Exact attention of the query group over the cache.
  public func attend(queries: [Float], heads: Int) throws -> AttentionPartial {
    try FullAttention.attend(queries: queries, heads: heads, keys: keys, values: values)
  }

  /// Exact attention of the query group over the cache, and the probability mass each row
  /// drew, summed over the group: what `accumulate` adds to the eviction order.
  public func attendWeighing(queries: [Float], heads: Int) throws -> (
    partial: AttentionPartial, mass: [Float]
  ) {
    let (partial, p) = try FullAttention.attendWithProbabilities(
      queries: queries, heads: heads, keys: keys, values: values)
    let n = keys.rows
    var drawn = [Float](repeating: 0, count: n)
    for h in 0..<heads { for j in 0..<n { drawn[j] += p[h * n + j] } }
    return (partial, drawn)
  }

  /// Adds one step's drawn mass (from `attendWeighing` on this cache) to each row's.
  public mutating func accumulate(_ drawn: [Float]) {
    guard drawn.count == mass.count else { return }
    for j in 0..<mass.count { mass[j] += drawn[j] }
  }
}

/// A pivot's watch over its own attention: every `interval` steps it compares each query
/// head's current top-B set with its reference; when the median overlap falls below the
/// threshold, the reference moves and the pivot's satellites must be refreshed.
public struct PivotDriftMonitor: Sendable {
  public let interval: Int
  public let threshold: Double
  public let budget: Int
  public let poolWidth: Int
  /// Reference top-B set per query head.
  public private(set) var reference: [[Int]]

  /// Starts from the prefill's last-query probabilities `[heads][n]`.
  public init(
    prefillProbabilities: [Float], heads: Int, budget: Int, configuration: HeteroCacheConfiguration
  ) {
    self.interval = configuration.driftInterval
    self.threshold = configuration.stabilityThreshold
    self.budget = max(1, budget)
    self.poolWidth = configuration.poolWidth
    self.reference = Self.topSets(
      prefillProbabilities, heads: heads, k: max(1, budget), width: poolWidth)
  }

  static func topSets(_ p: [Float], heads: Int, k: Int, width: Int) -> [[Int]] {
    let n = p.count / heads
    return (0..<heads).map { h in
      AttentionPattern.top(AttentionPattern.smooth(p[h * n..<(h + 1) * n], width: width), k: k)
    }
  }

  /// What a drift check found.
  public struct Drift: Sendable {
    /// Median overlap of current and reference sets.
    public var medianOverlap: Double
    /// Smoothed max-over-group attention over all tokens: satellites take their top-cap.
    public var ranking: [Float]
  }

  /// Whether decode step `step` (0-based) is one at which the pivot checks its drift.
  public func checks(step: Int) -> Bool { (step + 1) % interval == 0 }

  /// Observes decode step `step` (0-based) with the pivot's current probabilities
  /// `[heads][n]`; returns a drift when this is a check step and the overlap fell too low.
  public mutating func observe(step: Int, probabilities: [Float], heads: Int) -> Drift? {
    guard checks(step: step) else { return nil }
    let current = Self.topSets(probabilities, heads: heads, k: budget, width: poolWidth)
    let overlap = median(zip(current, reference).map { AttentionPattern.overlap($0, $1) })
    guard overlap < threshold else { return nil }
    reference = current
    return Drift(
      medianOverlap: overlap,
      ranking: AttentionPattern.groupRanking(probabilities, rows: heads, poolWidth: poolWidth))
  }
}
