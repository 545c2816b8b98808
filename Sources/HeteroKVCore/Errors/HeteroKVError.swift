/// The one error type of HeteroKV's own failures, in every module and on both sides of every
/// wire: a code callers switch on, a message people read that names what was wrong, and the
/// underlying error when there is one (a socket error, a gRPC status, a file system error).
///
/// Modelled on grpc-swift's `RPCError`: `Code` is a struct of static members rather than an
/// enum, so codes can be added without breaking callers that switch with a `default`. A code
/// has a stable number (``Code/wireValue``), which is what a memory node's error frame carries,
/// and one mapping to a gRPC status (in the wire module).
public struct HeteroKVError: Error, Sendable, CustomStringConvertible {
  /// What kind of problem this is.
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    fileprivate enum Value: UInt16, CaseIterable {
      case malformedFrame = 1
      case unsupportedVersion = 2
      case unknownOpcode = 3
      case frameTooLarge = 4
      case checksumMismatch = 5
      case invalidArgument = 10
      case dimensionMismatch = 11
      case indexOutOfRange = 12
      case unknownShard = 13
      case unknownSequence = 14
      case nonFiniteInput = 15
      case unsupportedConfiguration = 16
      case emptyContext = 17
      case malformedInput = 18
      case resourceExhausted = 20
      case failedPrecondition = 21
      case notFound = 22
      case alreadyExists = 23
      case dataUnavailable = 24
      case unavailable = 30
      case deadlineExceeded = 31
      case connectionClosed = 32
      case unauthenticated = 33
      case permissionDenied = 34
      case internalError = 40
      case storageFailure = 41
    }

    fileprivate let value: Value

    fileprivate init(_ value: Value) { self.value = value }

    /// The code's number in data-plane error frames (stable across versions).
    public var wireValue: UInt16 { value.rawValue }

    /// The code sent as `wireValue`, or nil for a number this version does not know.
    public init?(wireValue: UInt16) {
      guard let value = Value(rawValue: wireValue) else { return nil }
      self.value = value
    }

    /// Every code this version knows.
    public static var allCases: [Code] { Value.allCases.map(Code.init) }

    public var description: String { "\(value)" }

    // Framing (data plane).
    /// A frame that cannot be parsed: bad magic, truncated, fields that contradict its length.
    public static let malformedFrame = Code(.malformedFrame)
    /// The frame speaks a protocol version this side does not.
    public static let unsupportedVersion = Code(.unsupportedVersion)
    /// The opcode is not one this side serves.
    public static let unknownOpcode = Code(.unknownOpcode)
    /// The frame's declared payload exceeds the configured limit.
    public static let frameTooLarge = Code(.frameTooLarge)
    /// The payload's CRC32C does not match the header.
    public static let checksumMismatch = Code(.checksumMismatch)

    // The caller's input.
    /// An argument out of its valid range.
    public static let invalidArgument = Code(.invalidArgument)
    /// Two shapes that must agree do not (head dim, group size, row counts).
    public static let dimensionMismatch = Code(.dimensionMismatch)
    /// A token index outside the rows that are held.
    public static let indexOutOfRange = Code(.indexOutOfRange)
    /// No shard with that id is stored on the node.
    public static let unknownShard = Code(.unknownShard)
    /// No sequence with that id is open (worker) or stored (memory node).
    public static let unknownSequence = Code(.unknownSequence)
    /// NaN or infinity in an input tensor.
    public static let nonFiniteInput = Code(.nonFiniteInput)
    /// A configuration value outside what the codec or policy supports.
    public static let unsupportedConfiguration = Code(.unsupportedConfiguration)
    /// An operation needs at least one token and got none.
    public static let emptyContext = Code(.emptyContext)
    /// A file or byte stream that does not follow its documented format.
    public static let malformedInput = Code(.malformedInput)

    // State.
    /// There is no room (page pool, pooled capacity, a sequence's budget); nothing was stored.
    public static let resourceExhausted = Code(.resourceExhausted)
    /// The call does not fit the current state (prefill after decode began, a lease expired).
    public static let failedPrecondition = Code(.failedPrecondition)
    /// The named member, sequence or record does not exist.
    public static let notFound = Code(.notFound)
    /// Something with that id already exists.
    public static let alreadyExists = Code(.alreadyExists)
    /// Rows a step needs are on no reachable memory node.
    public static let dataUnavailable = Code(.dataUnavailable)

    // Reaching a peer.
    /// A peer could not be reached (connect failed, connection lost, no such node).
    public static let unavailable = Code(.unavailable)
    /// No answer arrived before the deadline.
    public static let deadlineExceeded = Code(.deadlineExceeded)
    /// The connection was closed while the request was in flight.
    public static let connectionClosed = Code(.connectionClosed)
    /// The caller did not present a valid credential.
    public static let unauthenticated = Code(.unauthenticated)
    /// The caller proved who it is but may not do this (another tenant's namespace).
    public static let permissionDenied = Code(.permissionDenied)

    // Ours.
    /// A failure inside HeteroKV that is not the caller's fault.
    public static let internalError = Code(.internalError)
    /// Durable state could not be read or written.
    public static let storageFailure = Code(.storageFailure)
  }

  /// The kind of problem.
  public var code: Code
  /// A human-readable explanation naming the offending input, sequence, node or file.
  public var message: String
  /// The error this one was raised for, when there is one.
  public var cause: (any Error)?

  /// An error of `code` with `message`, raised for `cause`.
  public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  /// The code and the message (which names the cause in words where there is one; the
  /// cause itself stays available to code through ``cause``).
  public var description: String { "\(code): \(message)" }

  /// The message prefixed by `context`: the same code and cause.
  public func prefixed(_ context: String) -> HeteroKVError {
    HeteroKVError(code, "\(context): \(message)", cause: cause)
  }
}

extension HeteroKVError: Equatable, Hashable {
  /// Equal when code and message agree; the cause is not compared.
  public static func == (a: HeteroKVError, b: HeteroKVError) -> Bool {
    a.code == b.code && a.message == b.message
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(code)
    hasher.combine(message)
  }
}

extension HeteroKVError {
  /// A `dimensionMismatch` error.
  public static func dimension(_ message: String) -> HeteroKVError {
    .init(.dimensionMismatch, message)
  }
  /// An `unsupportedConfiguration` error.
  public static func unsupported(_ message: String) -> HeteroKVError {
    .init(.unsupportedConfiguration, message)
  }
  /// An `invalidArgument` error.
  public static func invalid(_ message: String) -> HeteroKVError {
    .init(.invalidArgument, message)
  }
}

/// Throws `nonFiniteInput` when `values` holds a NaN or an infinity.
@inlinable
public func requireFinite(_ values: [Float], _ what: @autoclosure () -> String) throws {
  for (i, v) in values.enumerated() where !v.isFinite {
    throw HeteroKVError(.nonFiniteInput, "\(what()) has a non-finite value (\(v)) at element \(i)")
  }
}

extension HeteroKVError.Code {
  /// Whether the peer could not be reached or did not answer (rather than refusing).
  public var isUnreachable: Bool {
    self == .unavailable || self == .deadlineExceeded || self == .connectionClosed
  }
}
