import HeteroKVEngineClient
import Foundation
import GRPCCore
import HeteroKVCore
import HeteroKVWire

/// The engine API over gRPC (`Proto/heterokv/v1/engine.proto`): each call's tensors are
/// checked against the model's geometry and bounded before they are decoded, handed to the
/// `Worker`, and its errors become gRPC status codes with the worker's message.
public struct EngineService: Heterokv_V1_Engine.SimpleServiceProtocol {
  /// Largest message the service accepts; clients split longer prefills.
  public static let maxMessageBytes = 64 << 20
  /// Most tokens one Append may carry.
  public static let maxAppendTokens = 1 << 20
  /// Most observation rows one Append may carry.
  public static let maxObservationRows = 4096

  let worker: Worker

  /// The service over `worker`.
  public init(worker: Worker) { self.worker = worker }

  var geometry: ModelGeometry { worker.options.geometry }

  public func createSequence(
    request: Heterokv_V1_CreateSequenceRequest, context: ServerContext
  ) async throws -> Heterokv_V1_SequenceInfo {
    guard request.maxTokens > 0, request.maxTokens <= UInt64(UInt32.max) else {
      throw RPCError(code: .invalidArgument, message: "max_tokens must be in 1...2^32-1")
    }
    guard request.profiles.count <= 1 << 16 else {
      throw RPCError(code: .invalidArgument, message: "at most 65536 profiles")
    }
    let profiles = try request.profiles.isEmpty ? nil : request.profiles.map(HeadProfile.init)
    let info = try await mapped {
      try await worker.createSequence(
        SequenceRef(request.ref), maxTokens: Int(request.maxTokens), profiles: profiles)
    }
    return OpenedSequence(
      ref: info.ref, geometry: info.geometry, placementVersion: info.placement.version,
      nodes: info.placement.nodes.map(\.endpoint.id), replication: info.placement.replication
    ).proto
  }

  public func append(request: Heterokv_V1_AppendRequest, context: ServerContext) async throws
    -> Heterokv_V1_AppendResponse
  {
    let g = geometry
    let tokens = Int(request.tokens)
    guard tokens > 0, tokens <= Self.maxAppendTokens else {
      throw RPCError(
        code: .invalidArgument, message: "tokens must be in 1...\(Self.maxAppendTokens)")
    }
    let bytes = tokens * g.kvHeads * g.headDim * 2
    guard request.keys.count == bytes, request.values.count == bytes else {
      throw RPCError(
        code: .invalidArgument,
        message:
          "\(tokens) tokens of \(g.kvHeads) KV heads x \(g.headDim) need \(bytes) bytes of fp16 "
          + "keys and of values, got \(request.keys.count) and \(request.values.count)")
    }
    var observation: [Float]?
    if request.observationRows > 0 {
      let rows = Int(request.observationRows)
      let expected = rows * g.queryHeads * g.headDim * 4
      guard rows <= Self.maxObservationRows, request.observationQueries.count == expected else {
        throw RPCError(
          code: .invalidArgument,
          message:
            "observation: at most \(Self.maxObservationRows) rows of \(g.queryHeads) x "
            + "\(g.headDim) f32; \(rows) rows need \(expected) bytes, got "
            + "\(request.observationQueries.count)")
      }
      observation = TensorBytes.floats(request.observationQueries)
    }
    let keys = TensorBytes.halves(request.keys)!
    let values = TensorBytes.halves(request.values)!
    let length = try await mapped {
      try await worker.append(
        SequenceRef(request.ref), layer: Int(request.layer), tokens: tokens, keys: keys,
        values: values, observation: observation)
    }
    return .with { $0.tokens = UInt64(length) }
  }

  public func attend(request: Heterokv_V1_AttendRequest, context: ServerContext) async throws
    -> Heterokv_V1_AttendResponse
  {
    let queries = try checkedQueries(request.queries)
    let result = try await mapped {
      try await worker.attend(
        SequenceRef(request.ref), layer: Int(request.layer), queries: queries,
        withSelection: request.withSelection)
    }
    return .with {
      $0.output = TensorBytes.data(floats: result.output)
      $0.bytesMoved = UInt64(result.bytesMoved)
      if let selections = result.selections {
        $0.selections = selections.map { s in .with { $0.tokens = s.map { UInt32($0) } } }
      }
    }
  }

  public func appendAttend(request: Heterokv_V1_AppendAttendRequest, context: ServerContext)
    async throws -> Heterokv_V1_AttendResponse
  {
    guard request.hasAppend, request.hasAttend else {
      throw RPCError(code: .invalidArgument, message: "append_attend needs an append and an attend")
    }
    guard request.append.ref == request.attend.ref, request.append.layer == request.attend.layer
    else {
      throw RPCError(
        code: .invalidArgument,
        message:
          "append_attend: the append (sequence \(request.append.ref.sequence), layer "
          + "\(request.append.layer)) and the attend (sequence \(request.attend.ref.sequence), "
          + "layer \(request.attend.layer)) name different steps")
    }
    // The attend's queries are checked before the token is appended, so a refused step
    // leaves the sequence as it was.
    _ = try checkedQueries(request.attend.queries, ifRefused: "; nothing was appended")
    _ = try await append(request: request.append, context: context)
    return try await attend(request: request.attend, context: context)
  }

  public func release(request: Heterokv_V1_SequenceRef, context: ServerContext) async throws
    -> Heterokv_V1_ReleaseResponse
  {
    let released = try await mapped { try await worker.release(SequenceRef(request)) }
    return .with { $0.releasedBytes = UInt64(released) }
  }

  public func getSequenceStats(request: Heterokv_V1_SequenceRef, context: ServerContext)
    async throws -> Heterokv_V1_SequenceStats
  {
    let stats = try await mapped { try await worker.stats(SequenceRef(request)) }
    return stats.proto
  }

  /// `data` as the f32 queries `[queryHeads][headDim]` of one step, or the refusal naming
  /// the size expected (`ifRefused` appended to its message).
  func checkedQueries(_ data: Data, ifRefused: String = "") throws -> [Float] {
    let g = geometry
    let expected = g.queryHeads * g.headDim * 4
    guard data.count == expected, let queries = TensorBytes.floats(data) else {
      throw RPCError(
        code: .invalidArgument,
        message:
          "queries must be \(g.queryHeads) x \(g.headDim) f32 (\(expected) bytes), got "
          + "\(data.count)\(ifRefused)")
    }
    return queries
  }

  /// Runs a worker call, turning its error into the matching status.
  func mapped<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    do {
      return try await body()
    } catch let error as HeteroKVError {
      throw error.rpcError
    }
  }
}
