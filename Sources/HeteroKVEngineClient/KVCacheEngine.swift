import HeteroKVCore

/// The calls an inference engine makes per layer, the same in process (`Worker`) and over
/// gRPC (`EngineClient`), so a driver can run against either.
public protocol KVCacheEngine: Sendable {
  /// Appends K/V `[tokens][kvHeads][headDim]` to `layer`; returns the layer's length.
  @discardableResult
  func append(
    _ ref: SequenceRef, layer: Int, tokens: Int, keys: [Float16], values: [Float16],
    observation: [Float]?
  ) async throws(HeteroKVError) -> Int
  /// Attention of `queries` `[queryHeads][headDim]` over `layer`.
  func attend(_ ref: SequenceRef, layer: Int, queries: [Float], withSelection: Bool)
    async throws(HeteroKVError) -> AttendResult
}

extension EngineClient: KVCacheEngine {}
