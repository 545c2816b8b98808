import GRPCCore

/// An error of the worker's engine API: a kind callers switch on (and that maps to a gRPC
/// status), and a message that names the sequence, layer or node concerned.
public struct WorkerError: Error, Sendable, Hashable, CustomStringConvertible {
  /// What kind of failure this is.
  public enum Kind: String, Sendable, Hashable, CaseIterable {
    /// No open sequence has that id.
    case unknownSequence
    /// A sequence with that id is already open on this worker.
    case sequenceExists
    /// A tensor's shape, a layer index or a value is out of range.
    case invalidArgument
    /// The call does not fit the sequence's state (prefill after decode began, layers that
    /// disagree on their length).
    case failedPrecondition
    /// Rows the step needs are on no reachable memory node: the sequence cannot answer
    /// correctly until they are re-prefilled. Other sequences are not affected.
    case dataUnavailable
    /// The memory tier or the worker cannot hold more.
    case resourceExhausted
    /// The coordinator refused or could not be reached.
    case coordinator
    /// The worker (or a service behind it) could not be reached or did not answer in time.
    case unreachable
    /// A failure inside the worker that is not the caller's fault.
    case `internal`
  }

  /// The kind of failure.
  public var kind: Kind
  /// What went wrong, for people.
  public var message: String

  /// An error of `kind` with `message`.
  public init(_ kind: Kind, _ message: String) {
    self.kind = kind
    self.message = message
  }

  public var description: String { "\(kind.rawValue): \(message)" }
}

extension WorkerError.Kind {
  /// The gRPC status a worker error travels as.
  package var statusCode: RPCError.Code {
    switch self {
    case .unknownSequence: .notFound
    case .sequenceExists: .alreadyExists
    case .invalidArgument: .invalidArgument
    case .failedPrecondition: .failedPrecondition
    case .dataUnavailable: .dataLoss
    case .resourceExhausted: .resourceExhausted
    case .coordinator, .unreachable: .unavailable
    case .internal: .internalError
    }
  }

  /// The kind a gRPC status stands for.
  package init(statusCode: RPCError.Code) {
    self =
      switch statusCode {
      case .notFound: .unknownSequence
      case .alreadyExists: .sequenceExists
      case .invalidArgument, .outOfRange: .invalidArgument
      case .failedPrecondition: .failedPrecondition
      case .dataLoss: .dataUnavailable
      case .resourceExhausted: .resourceExhausted
      case .unavailable, .deadlineExceeded: .unreachable
      default: .internal
      }
  }
}
