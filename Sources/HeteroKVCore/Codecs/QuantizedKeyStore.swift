/// The key codec seam: a sequence's keys for one KV head, held in compressed form and scored
/// straight from the codes. Product quantization (HCAttention) and scalar per-channel
/// quantization (KIVI-style) both conform; attention code depends only on this protocol.
public protocol QuantizedKeyStore: Sendable {
  /// Dimension of one key.
  var headDim: Int { get }
  /// Keys stored so far.
  var count: Int { get }
  /// Bytes this store keeps resident (codes, per-group parameters, full-precision window and
  /// its share of any codebook).
  var residentBytes: Int { get }
  /// Appends keys (one row each), coding them.
  mutating func append(_ keys: HalfMatrix) throws
  /// `scale * q[h]·k̂[j]` for every query head and stored key, head-major `[heads][count]`,
  /// computed from the codes without decoding the key matrix.
  func scores(queries: [Float], heads: Int, scale: Float) throws -> [Float]
  /// The key the codes stand for at `index` (for tests and error measurements).
  func decodedKey(at index: Int) -> [Float]
}

extension QuantizedKeyStore {
  func validateQueries(_ queries: [Float], heads: Int) throws {
    guard heads > 0, queries.count == heads * headDim else {
      throw HeteroKVError.dimension(
        "queries hold \(queries.count) values, expected \(heads) heads x \(headDim) dims")
    }
    try requireFinite(queries, "query")
  }
}
