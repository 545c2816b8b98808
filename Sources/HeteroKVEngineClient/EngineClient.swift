import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import HeteroKVCore
import HeteroKVControlPlane
import HeteroKVWire

/// An inference engine's connection to a worker over gRPC: the same calls as `Worker`, with
/// deadlines, long prefills split into messages under the service's limit, and failures as
/// `HeteroKVError`s (a worker that cannot be reached is `.unavailable`).
public struct EngineClient: Sendable {
  /// The worker's gRPC address.
  public let address: HostPort
  let stub: Heterokv_V1_Engine.Client<HTTP2ClientTransport.Posix>
  let timeout: Duration
  /// The geometry the worker serves (from the first CreateSequence), for splitting appends.
  let geometry: ModelGeometry

  /// Bytes of keys (and of values) per Append message.
  public static let appendPieceBytes = 16 << 20

  /// Runs `body` with a client to the worker at `address` serving `geometry`.
  public static func with<Result: Sendable>(
    address: HostPort, geometry: ModelGeometry, security: ControlPlaneSecurity = .none,
    timeout: Duration = .seconds(60), _ body: (EngineClient) async throws -> Result
  ) async throws -> Result {
    try await ControlPlaneClient.with(address: address, security: security) { grpc in
      try await body(
        EngineClient(
          address: address, stub: .init(wrapping: grpc), timeout: timeout, geometry: geometry))
    }
  }

  private func call<T: Sendable>(_ what: String, _ body: (CallOptions) async throws -> T)
    async throws(HeteroKVError) -> T
  {
    var options = CallOptions.defaults
    options.timeout = timeout
    do {
      return try await body(options)
    } catch let error as RPCError {
      throw HeteroKVError(error, peer: "the worker at \(address)", operation: what)
    } catch {
      throw HeteroKVError(.unavailable, "the worker at \(address), \(what): \(error)", cause: error)
    }
  }

  /// Opens a sequence, with calibrated head profiles when given.
  public func createSequence(
    _ ref: SequenceRef, maxTokens: Int, profiles: [HeadProfile]? = nil
  ) async throws(HeteroKVError) -> OpenedSequence {
    let answer = try await call("CreateSequence") {
      try await stub.createSequence(
        .with {
          $0.ref = ref.proto
          $0.maxTokens = UInt64(maxTokens)
          $0.profiles = (profiles ?? []).map(\.report)
        }, options: $0)
    }
    do {
      return try OpenedSequence(answer)
    } catch {
      throw error.prefixed("the worker at \(address)")
    }
  }

  /// Appends K/V `[tokens][kvHeads][headDim]` to `layer`, in as many messages as it takes;
  /// `observation` travels with the last one. Returns the layer's length.
  @discardableResult
  public func append(
    _ ref: SequenceRef, layer: Int, tokens: Int, keys: [Float16], values: [Float16],
    observation: [Float]? = nil
  ) async throws(HeteroKVError) -> Int {
    let width = geometry.kvHeads * geometry.headDim
    guard keys.count == tokens * width, values.count == tokens * width else {
      throw HeteroKVError(
        .invalidArgument,
        "\(tokens) tokens need \(tokens * width) key and value elements, got \(keys.count) and \(values.count)"
      )
    }
    let perPiece = max(1, Self.appendPieceBytes / (width * 2))
    var start = 0
    var length = 0
    while start < tokens {
      let count = min(perPiece, tokens - start)
      let last = start + count == tokens
      let range = (start * width)..<((start + count) * width)
      let request = Heterokv_V1_AppendRequest.with {
        $0.ref = ref.proto
        $0.layer = UInt32(layer)
        $0.tokens = UInt32(count)
        $0.keys = TensorBytes.data(halves: keys[range])
        $0.values = TensorBytes.data(halves: values[range])
        if last, let observation {
          $0.observationRows = UInt32(observation.count / (geometry.queryHeads * geometry.headDim))
          $0.observationQueries = TensorBytes.data(floats: observation)
        }
      }
      length = Int(try await call("Append") { try await stub.append(request, options: $0) }.tokens)
      start += count
    }
    return length
  }

  /// Attention of `queries` `[queryHeads][headDim]` over `layer`.
  public func attend(
    _ ref: SequenceRef, layer: Int, queries: [Float], withSelection: Bool = false
  ) async throws(HeteroKVError) -> AttendResult {
    let answer = try await call("Attend") {
      try await stub.attend(
        .with {
          $0.ref = ref.proto
          $0.layer = UInt32(layer)
          $0.queries = TensorBytes.data(floats: queries)
          $0.withSelection = withSelection
        }, options: $0)
    }
    return try attendResult(answer, withSelection: withSelection)
  }

  private func attendResult(_ answer: Heterokv_V1_AttendResponse, withSelection: Bool)
    throws(HeteroKVError) -> AttendResult
  {
    guard let output = TensorBytes.floats(answer.output),
      output.count == geometry.queryHeads * geometry.headDim
    else {
      throw HeteroKVError(
        .internalError, "worker at \(address) answered \(answer.output.count) output bytes")
    }
    return AttendResult(
      output: output,
      selections: withSelection ? answer.selections.map { $0.tokens.map { Int32($0) } } : nil,
      bytesMoved: Int(answer.bytesMoved))
  }

  /// One decode step of `layer` in one round trip: appends `tokens` tokens of K/V
  /// `[tokens][kvHeads][headDim]` (one, at decode), then attends `queries`
  /// `[queryHeads][headDim]`; the same as `append` then `attend`.
  public func appendAndAttend(
    _ ref: SequenceRef, layer: Int, tokens: Int = 1, keys: [Float16], values: [Float16],
    queries: [Float], withSelection: Bool = false
  ) async throws(HeteroKVError) -> AttendResult {
    let width = geometry.kvHeads * geometry.headDim
    guard keys.count == tokens * width, values.count == tokens * width,
      tokens * width * 2 <= Self.appendPieceBytes
    else {
      throw HeteroKVError(
        .invalidArgument,
        "\(tokens) tokens need \(tokens * width) key and value elements (at most "
          + "\(Self.appendPieceBytes / 2) in one step), got \(keys.count) and \(values.count)")
    }
    let request = Heterokv_V1_AppendAttendRequest.with {
      $0.append = .with {
        $0.ref = ref.proto
        $0.layer = UInt32(layer)
        $0.tokens = UInt32(tokens)
        $0.keys = TensorBytes.data(halves: keys[...])
        $0.values = TensorBytes.data(halves: values[...])
      }
      $0.attend = .with {
        $0.ref = ref.proto
        $0.layer = UInt32(layer)
        $0.queries = TensorBytes.data(floats: queries)
        $0.withSelection = withSelection
      }
    }
    let answer = try await call("AppendAttend") {
      try await stub.appendAttend(request, options: $0)
    }
    return try attendResult(answer, withSelection: withSelection)
  }

  /// Releases a sequence; returns the memory-tier bytes freed.
  @discardableResult
  public func release(_ ref: SequenceRef) async throws(HeteroKVError) -> Int {
    Int(try await call("Release") { try await stub.release(ref.proto, options: $0) }.releasedBytes)
  }

  /// A sequence's footprint and traffic.
  public func stats(_ ref: SequenceRef) async throws(HeteroKVError) -> SequenceStats {
    let answer = try await call("GetSequenceStats") {
      try await stub.getSequenceStats(ref.proto, options: $0)
    }
    do {
      return try SequenceStats(answer)
    } catch {
      throw error.prefixed("the worker at \(address)")
    }
  }
}
