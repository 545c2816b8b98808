/// Why the coordinator refused a request: a kind that maps onto a gRPC status code, and a
/// message naming what was wrong.
public struct CoordinatorError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The kind of refusal.
  public enum Kind: String, Sendable, Hashable {
    case invalidArgument, notFound, alreadyExists, failedPrecondition, resourceExhausted
    case unavailable, unauthenticated, storage
  }

  /// The kind.
  public var kind: Kind
  /// What was wrong.
  public var message: String

  public init(_ kind: Kind, _ message: String) {
    self.kind = kind
    self.message = message
  }

  public var description: String { message }

  static func invalidArgument(_ m: String) -> Self { .init(.invalidArgument, m) }
  static func notFound(_ m: String) -> Self { .init(.notFound, m) }
  static func failedPrecondition(_ m: String) -> Self { .init(.failedPrecondition, m) }
  static func resourceExhausted(_ m: String) -> Self { .init(.resourceExhausted, m) }
  static func unavailable(_ m: String) -> Self { .init(.unavailable, m) }
}
