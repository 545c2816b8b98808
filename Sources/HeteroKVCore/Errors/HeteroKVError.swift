/// An error raised by HeteroKV's numeric core: a code callers switch on and a message people
/// read, naming what was wrong.
public struct HeteroKVError: Error, Sendable, Hashable, CustomStringConvertible {
  /// What kind of problem this is.
  public enum Code: String, Sendable, Hashable, Codable {
    /// Two shapes that must agree do not (head dim, group size, row counts).
    case dimensionMismatch
    /// A configuration value outside what the codec or policy supports (bit width, centroids).
    case unsupportedConfiguration
    /// An operation needs at least one token and got none.
    case emptyContext
    /// NaN or infinity in an input tensor.
    case nonFiniteInput
    /// Any other argument out of its valid range.
    case invalidArgument
    /// A file or byte stream that does not follow its documented format.
    case malformedInput
  }

  /// The kind of problem.
  public var code: Code
  /// A human-readable explanation naming the offending input.
  public var message: String

  /// Creates an error with a code and a message.
  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public var description: String { "\(code.rawValue): \(message)" }
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
