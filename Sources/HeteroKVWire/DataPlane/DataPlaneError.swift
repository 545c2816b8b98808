/// An error of the data plane, on either side of the wire: a code that callers switch on and
/// a message for people. Error responses carry both, so a worker sees the node's own words.
public struct DataPlaneError: Error, Sendable, Hashable, CustomStringConvertible {
  /// What kind of failure this is. The raw values are the codes sent in error frames.
  public enum Code: UInt16, Sendable, Hashable, CaseIterable {
    /// A frame that cannot be parsed: bad magic, truncated, fields that contradict its length.
    case malformedFrame = 1
    /// The frame speaks a protocol version this side does not.
    case unsupportedVersion = 2
    /// The opcode is not one this side serves.
    case unknownOpcode = 3
    /// The frame's declared payload exceeds the configured limit.
    case frameTooLarge = 4
    /// The payload's CRC32C does not match the header.
    case checksumMismatch = 5
    /// A field has a value outside what the operation accepts.
    case invalidArgument = 10
    /// Head dimension, key presence or row counts disagree with the shard or the payload.
    case dimensionMismatch = 11
    /// A token index outside the rows the shard holds.
    case indexOutOfRange = 12
    /// No shard with that id is stored on the node.
    case unknownShard = 13
    /// No shard of that sequence is stored on the node.
    case unknownSequence = 14
    /// The node's page pool cannot hold the batch; nothing was stored.
    case capacityExhausted = 20
    /// The node could not be reached (connect failed, connection lost).
    case nodeUnreachable = 30
    /// No response arrived before the request's deadline.
    case deadlineExceeded = 31
    /// The connection was closed while the request was in flight.
    case connectionClosed = 32
    /// A failure inside the node that is not the request's fault.
    case internalError = 40
  }

  /// The kind of failure.
  public var code: Code
  /// What went wrong, for people.
  public var message: String

  /// An error of `code` with `message`.
  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public var description: String { "\(code): \(message)" }
}
