import CHeteroKVKernels

/// A linear map of one head's key space under which the squared distance between two keys is
/// the expected squared difference of their scores over the queries the head was seen to ask.
/// With Σ the queries' second moment, keys map by B = Σ^½ and queries by B⁻¹, so q·k is
/// unchanged while k-means in the mapped space spends its centroids where a score error costs
/// the most (query-aware codebooks; error along directions no query takes is nearly free).
public struct QueryMomentTransform: Sendable, Hashable {
  /// Head dimension.
  public let dim: Int
  /// Eigenvectors of the regularized second moment, one per row, fp16 `[dim][dim]`.
  let basis: [Float16]
  /// Square roots of the eigenvalues, in the order of `basis`.
  let roots: [Float]

  /// The share of the identity mixed into the normalized second moment when none is given: the
  /// observation queries are a few dozen rows and decode queries drift from them, so
  /// directions they missed keep this weight (on SmolLM2 traces 0.4-0.6 scored best; below 0.1
  /// the codes fit the observed queries and score decode worse than plain codes).
  public static let defaultFloor = 0.5

  /// The map for `queries` (`[rows][dim]`, at least one nonzero row): Σ = mean q qᵀ, scaled to
  /// unit mean eigenvalue and mixed with `floor` of the identity. Nil when the queries carry no
  /// energy or are not finite.
  public init?(queries: [Float], dim: Int, floor: Double = QueryMomentTransform.defaultFloor) {
    guard dim > 0, queries.count >= dim, queries.count % dim == 0, floor > 0, floor <= 1,
      queries.allSatisfy(\.isFinite)
    else { return nil }
    let rows = queries.count / dim
    var moment = [Double](repeating: 0, count: dim * dim)
    for r in 0..<rows {
      let q = r * dim
      for i in 0..<dim {
        let qi = Double(queries[q + i])
        guard qi != 0 else { continue }
        for j in i..<dim { moment[i * dim + j] += qi * Double(queries[q + j]) }
      }
    }
    var trace = 0.0
    for i in 0..<dim { trace += moment[i * dim + i] }
    guard trace > 0, trace.isFinite else { return nil }
    let norm = Double(dim) / trace
    for i in 0..<dim {
      for j in i..<dim {
        let v = (1 - floor) * moment[i * dim + j] * norm + (i == j ? floor : 0)
        moment[i * dim + j] = v
        moment[j * dim + i] = v
      }
    }
    let (values, vectors) = Self.symmetricEigen(moment, dim: dim)
    var basis = [Float16](repeating: 0, count: dim * dim)
    for e in 0..<dim {
      for i in 0..<dim { basis[e * dim + i] = Float16(vectors[i * dim + e]) }
    }
    self.dim = dim
    self.basis = basis
    roots = values.map { Float(max($0, floor).squareRoot()) }
  }

  /// Bytes the map keeps resident: the fp16 eigenvectors and fp32 roots.
  public var byteCount: Int { dim * dim * 2 + dim * 4 }

  /// Keys `[rows][dim]` mapped into the coded space (B k).
  public func keysToCodedSpace(_ keys: [Float]) -> [Float] { apply(to: keys, inverse: false) }

  /// Queries `[rows][dim]` mapped into the coded space (B⁻¹ q), so their dot products with
  /// mapped keys equal the original ones.
  public func queriesToCodedSpace(_ queries: [Float]) -> [Float] {
    apply(to: queries, inverse: true)
  }

  /// Points of the coded space `[rows][dim]` mapped back to keys (B⁻¹ k').
  public func keysFromCodedSpace(_ points: [Float]) -> [Float] { apply(to: points, inverse: true) }

  /// B^±1 x = Eᵀ S^±1 E x for every row, E the eigenvector rows and S the roots.
  private func apply(to x: [Float], inverse: Bool) -> [Float] {
    precondition(x.count % dim == 0)
    let rows = x.count / dim
    guard rows > 0 else { return x }
    let d = dim
    let e = basis.map(Float.init)
    // y[t][k] = Σ_i x[t][i] · E[k][i]: each row's coordinates in the eigenbasis.
    var y = [Float](repeating: 0, count: x.count)
    hkv_matmul_rows_f32(x, rows, d, e, d, &y, d)
    // z[t] = Σ_k (S^±1 y[t])[k] · E[k]: back to the head's coordinates, row by row of E.
    var z = [Float](repeating: 0, count: x.count)
    e.withUnsafeBufferPointer { e in
      z.withUnsafeMutableBufferPointer { z in
        for t in 0..<rows {
          for k in 0..<d {
            let w = inverse ? y[t * d + k] / roots[k] : y[t * d + k] * roots[k]
            for i in 0..<d { z[t * d + i] += w * e[k * d + i] }
          }
        }
      }
    }
    return z
  }

  /// Eigenvalues and eigenvectors (columns of a row-major `[dim][dim]`) of a symmetric matrix,
  /// by cyclic Jacobi rotations: exact to rounding for the 64-128 dims of a head, in well
  /// under a millisecond a sweep.
  static func symmetricEigen(_ matrix: [Double], dim n: Int) -> (
    values: [Double], vectors: [Double]
  ) {
    var a = matrix
    var v = [Double](repeating: 0, count: n * n)
    for i in 0..<n { v[i * n + i] = 1 }
    var total = 0.0
    for x in a { total += x * x }
    a.withUnsafeMutableBufferPointer { a in
      v.withUnsafeMutableBufferPointer { v in
        // Rotates columns (or rows, with stride n) p and q of `m` by (c, s).
        func rotate(
          _ m: UnsafeMutableBufferPointer<Double>, _ p: Int, _ q: Int, stride: Int,
          step: Int, _ c: Double, _ s: Double
        ) {
          for k in 0..<n {
            let x = m[k * step + p * stride]
            let y = m[k * step + q * stride]
            m[k * step + p * stride] = c * x - s * y
            m[k * step + q * stride] = s * x + c * y
          }
        }
        for _ in 0..<64 {
          var off = 0.0
          for p in 0..<n { for q in (p + 1)..<n { off += a[p * n + q] * a[p * n + q] } }
          if off <= 1e-22 * total { break }
          for p in 0..<n {
            for q in (p + 1)..<n {
              let apq = a[p * n + q]
              guard abs(apq) > 1e-300 else { continue }
              let theta = (a[q * n + q] - a[p * n + p]) / (2 * apq)
              let t = (theta >= 0 ? 1 : -1) / (abs(theta) + (theta * theta + 1).squareRoot())
              let c = 1 / (t * t + 1).squareRoot()
              let s = t * c
              rotate(a, p, q, stride: 1, step: n, c, s)  // columns: A J
              rotate(a, p, q, stride: n, step: 1, c, s)  // rows: Jᵀ (A J)
              rotate(v, p, q, stride: 1, step: n, c, s)  // V J
            }
          }
        }
      }
    }
    return ((0..<n).map { a[$0 * n + $0] }, v)
  }
}
