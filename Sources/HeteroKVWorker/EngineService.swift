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
    return .with {
      $0.ref = info.ref.proto
      $0.model = info.geometry.name
      $0.layers = UInt32(info.geometry.layers)
      $0.queryHeads = UInt32(info.geometry.queryHeads)
      $0.kvHeads = UInt32(info.geometry.kvHeads)
      $0.headDim = UInt32(info.geometry.headDim)
      $0.placementVersion = info.placement.version
      $0.nodes = info.placement.nodes.map(\.endpoint.id)
      $0.replication = UInt32(info.placement.replication)
    }
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
    let g = geometry
    let expected = g.queryHeads * g.headDim * 4
    guard request.queries.count == expected else {
      throw RPCError(
        code: .invalidArgument,
        message:
          "queries must be \(g.queryHeads) x \(g.headDim) f32 (\(expected) bytes), got "
          + "\(request.queries.count)")
    }
    let queries = TensorBytes.floats(request.queries)!
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

  /// Runs a worker call, turning its error into the matching status.
  func mapped<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    do {
      return try await body()
    } catch let error as HeteroKVError {
      throw error.rpcError
    }
  }
}

extension SequenceStats {
  /// The wire form.
  public var proto: Heterokv_V1_SequenceStats {
    .with {
      $0.ref = ref.proto
      $0.tokens = UInt64(tokens)
      $0.policy = policy.rawValue
      $0.workerBytes = UInt64(workerBytes)
      $0.memoryTierBytes = UInt64(memoryTierBytes)
      $0.fullKvBytes = UInt64(fullKVBytes)
      $0.decodeSteps = UInt64(decodeSteps)
      $0.bytesMoved = UInt64(bytesMoved)
      $0.refreshes = UInt64(refreshes)
      $0.failovers = UInt64(failovers)
      $0.unshippedRows = UInt64(unshippedRows)
      $0.storedRows = UInt64(storedRows)
      $0.keptTokens = UInt64(keptTokens)
      $0.contextTokens = UInt64(contextTokens)
      $0.decodeBytesMoved = UInt64(decodeBytesMoved)
      $0.underReplicatedShards = UInt64(underReplicatedShards)
      $0.heads = heads.map { h in
        .with {
          $0.layer = UInt32(h.layer)
          $0.kvHead = UInt32(h.kvHead)
          $0.role = h.role.name
          $0.cap = UInt64(h.cap)
          $0.residentBytes = UInt64(h.residentBytes)
        }
      }
    }
  }
}
