/// The operations HeteroCache applies to attention rows before comparing heads: average
/// pooling along positions, group averaging, top sets and their overlap.
public enum AttentionPattern {
  /// Average pool of width `width` (odd) with zero padding, divided by the full width as a
  /// padded pool does, so that isolated spikes spread to their neighbours.
  public static func smooth(_ row: ArraySlice<Float>, width: Int = 5) -> [Float] {
    let n = row.count
    guard width > 1, n > 0 else { return Array(row) }
    let half = width / 2
    let base = row.startIndex
    var out = [Float](repeating: 0, count: n)
    var window: Float = 0
    for j in 0..<min(half, n) { window += row[base + j] }
    let inv = 1 / Float(width)
    for j in 0..<n {
      if j + half < n { window += row[base + j + half] }
      if j - half - 1 >= 0 { window -= row[base + j - half - 1] }
      out[j] = window * inv
    }
    return out
  }

  /// Element-wise mean of the rows of a `[rows][n]` matrix.
  public static func meanOfRows(_ m: [Float], rows: Int) -> [Float] {
    let n = m.count / rows
    var out = [Float](repeating: 0, count: n)
    for r in 0..<rows { for j in 0..<n { out[j] += m[r * n + j] } }
    let inv = 1 / Float(rows)
    return out.map { $0 * inv }
  }

  /// Element-wise max of the rows of a `[rows][n]` matrix.
  public static func maxOfRows(_ m: [Float], rows: Int) -> [Float] {
    let n = m.count / rows
    var out = [Float](repeating: -.infinity, count: n)
    for r in 0..<rows { for j in 0..<n { out[j] = max(out[j], m[r * n + j]) } }
    return out
  }

  /// Indices of the `k` largest values (ties to the lower index), ascending.
  public static func top(_ values: [Float], k: Int) -> [Int] {
    let n = values.count
    if k >= n { return Array(0..<n) }
    if k <= 0 { return [] }
    // Threshold by partial selection on a copy, then collect.
    var copy = values
    let kth = quickselectDescending(&copy, k: k - 1)
    var above: [Int] = []
    var equal: [Int] = []
    above.reserveCapacity(k)
    for (j, v) in values.enumerated() {
      if v > kth { above.append(j) } else if v == kth { equal.append(j) }
    }
    return (above + equal.prefix(k - above.count)).sorted()
  }

  /// |A ∩ B| / min(|A|, |B|) for index sets given as ascending arrays; 0 when either is empty.
  public static func overlap(_ a: [Int], _ b: [Int]) -> Double {
    guard !a.isEmpty, !b.isEmpty else { return 0 }
    var i = 0
    var j = 0
    var common = 0
    while i < a.count, j < b.count {
      if a[i] == b[j] {
        common += 1
        i += 1
        j += 1
      } else if a[i] < b[j] {
        i += 1
      } else {
        j += 1
      }
    }
    return Double(common) / Double(min(a.count, b.count))
  }

  /// The value of rank `k` (0-based) in descending order; reorders `values`.
  static func quickselectDescending(_ values: inout [Float], k: Int) -> Float {
    var lo = 0
    var hi = values.count - 1
    while lo < hi {
      let pivot = values[(lo + hi) / 2]
      var i = lo
      var j = hi
      while i <= j {
        while values[i] > pivot { i += 1 }
        while values[j] < pivot { j -= 1 }
        if i <= j {
          values.swapAt(i, j)
          i += 1
          j -= 1
        }
      }
      if k <= j { hi = j } else if k >= i { lo = i } else { return values[k] }
    }
    return values[k]
  }
}

/// The median of a non-empty list.
func median(_ xs: [Double]) -> Double {
  let s = xs.sorted()
  let n = s.count
  return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
}
