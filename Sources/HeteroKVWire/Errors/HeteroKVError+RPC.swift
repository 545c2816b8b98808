import GRPCCore
import HeteroKVCore

// The one mapping between HeteroKV's errors and gRPC statuses, for every control plane.

extension HeteroKVError.Code {
  /// The gRPC status code an error of this code travels as.
  public var rpcCode: RPCError.Code {
    switch self {
    case .indexOutOfRange: .outOfRange
    case .unknownShard, .unknownSequence, .notFound: .notFound
    case .alreadyExists: .alreadyExists
    case .failedPrecondition: .failedPrecondition
    case .resourceExhausted: .resourceExhausted
    case .dataUnavailable: .dataLoss
    case .unavailable, .connectionClosed: .unavailable
    case .deadlineExceeded: .deadlineExceeded
    case .unauthenticated: .unauthenticated
    case .permissionDenied: .permissionDenied
    case .internalError, .storageFailure: .internalError
    case .malformedFrame, .unsupportedVersion, .unknownOpcode, .frameTooLarge,
      .checksumMismatch, .invalidArgument, .dimensionMismatch, .nonFiniteInput,
      .unsupportedConfiguration, .emptyContext, .malformedInput:
      .invalidArgument
    default: .unknown
    }
  }

  /// The code a gRPC status stands for, when the peer did not say which (see
  /// ``HeteroKVError/rpcError``).
  public init(rpcCode: RPCError.Code) {
    self =
      switch rpcCode {
      case .invalidArgument: .invalidArgument
      case .outOfRange: .indexOutOfRange
      case .notFound: .notFound
      case .alreadyExists: .alreadyExists
      case .failedPrecondition, .aborted: .failedPrecondition
      case .resourceExhausted: .resourceExhausted
      case .dataLoss: .dataUnavailable
      case .unavailable, .cancelled: .unavailable
      case .deadlineExceeded: .deadlineExceeded
      case .unauthenticated: .unauthenticated
      case .permissionDenied: .permissionDenied
      default: .internalError
      }
  }
}

extension HeteroKVError {
  /// The metadata key that carries the exact code beside the coarser gRPC status.
  public static let codeMetadataKey = "hkv-error-code"

  /// This error as a gRPC status: the mapped status code, the message, and the exact code in
  /// metadata so that a HeteroKV client gets back the code the server raised.
  public var rpcError: RPCError {
    RPCError(
      code: code.rpcCode, message: message,
      metadata: [Self.codeMetadataKey: "\(code.wireValue)"], cause: self)
  }

  /// The error a failed gRPC call to `peer` stands for: the code the server raised (or the
  /// status's nearest code), a message naming the peer and the call, and the status as cause.
  public init(_ rpc: RPCError, peer: String, operation: String) {
    let exact = Array(rpc.metadata[stringValues: Self.codeMetadataKey]).first
      .flatMap(UInt16.init).flatMap(Code.init(wireValue:))
    let code = exact ?? Code(rpcCode: rpc.code)
    let message =
      code.isUnreachable
      ? "cannot reach \(peer) (\(operation): \(rpc.message))"
      : "\(peer) refused \(operation): \(rpc.message)"
    self.init(code, message, cause: rpc)
  }
}
