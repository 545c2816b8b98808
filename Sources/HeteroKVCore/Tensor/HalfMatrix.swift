/// A row-major matrix of IEEE fp16 values: how keys and values are stored (one row a token).
public struct HalfMatrix: Sendable, Hashable {
  /// Number of rows (tokens).
  public private(set) var rows: Int
  /// Number of columns (head dimension).
  public let cols: Int
  /// Row-major storage, `rows * cols` elements.
  public private(set) var storage: [Float16]

  /// An empty matrix with `cols` columns.
  public init(cols: Int) {
    self.rows = 0
    self.cols = cols
    self.storage = []
  }

  /// A matrix converted from fp32 row-major values; `values.count` must be a multiple of `cols`.
  public init(_ values: [Float], cols: Int) throws {
    guard cols > 0, values.count % cols == 0 else {
      throw HeteroKVError.dimension(
        "\(values.count) values do not form rows of \(cols) columns")
    }
    self.cols = cols
    self.rows = values.count / cols
    self.storage = Kernels.toHalf(values)
  }

  /// A matrix over fp16 row-major values as they are (no conversion).
  public init(halves: [Float16], cols: Int) throws {
    guard cols > 0, halves.count % cols == 0 else {
      throw HeteroKVError.dimension(
        "\(halves.count) values do not form rows of \(cols) columns")
    }
    self.cols = cols
    self.rows = halves.count / cols
    self.storage = halves
  }

  /// A matrix over `halves`, whose count the caller made a multiple of `cols` (> 0).
  init(exactly halves: [Float16], cols: Int) {
    precondition(cols > 0 && halves.count % cols == 0)
    self.cols = cols
    self.rows = halves.count / cols
    self.storage = halves
  }

  /// Bytes held by the elements.
  public var byteCount: Int { storage.count * 2 }

  /// Appends rows given as fp32 values.
  public mutating func append(_ values: [Float]) throws {
    guard values.count % cols == 0 else {
      throw HeteroKVError.dimension(
        "cannot append \(values.count) values to a matrix of \(cols) columns")
    }
    storage.append(contentsOf: Kernels.toHalf(values))
    rows += values.count / cols
  }

  /// Appends the rows of another matrix with the same column count.
  public mutating func append(contentsOf other: HalfMatrix) throws {
    guard other.cols == cols else {
      throw HeteroKVError.dimension("cannot append rows of \(other.cols) columns to \(cols)")
    }
    storage.append(contentsOf: other.storage)
    rows += other.rows
  }

  /// Removes the first `count` rows.
  public mutating func removeFirst(_ count: Int) {
    storage.removeFirst(count * cols)
    rows -= count
  }

  /// Removes row `index`; the rows after it move up one.
  public mutating func removeRow(at index: Int) {
    precondition(index >= 0 && index < rows, "row \(index) of \(rows)")
    storage.removeSubrange(index * cols..<(index + 1) * cols)
    rows -= 1
  }

  /// One row as fp32.
  public func row(_ index: Int) -> [Float] {
    storage.withUnsafeBufferPointer { buffer in
      Kernels.toFloat(UnsafeBufferPointer(rebasing: buffer[index * cols..<(index + 1) * cols]))
    }
  }

  /// The rows at `indices`, in that order, as a new matrix.
  public func gather(_ indices: [Int]) -> HalfMatrix {
    var out = HalfMatrix(cols: cols)
    out.storage.reserveCapacity(indices.count * cols)
    for i in indices {
      out.storage.append(contentsOf: storage[i * cols..<(i + 1) * cols])
    }
    out.rows = indices.count
    return out
  }

  /// All elements as fp32, row-major.
  public func floats() -> [Float] {
    storage.withUnsafeBufferPointer { Kernels.toFloat($0) }
  }
}
