import HeteroKVCore

// The coordinator's refusals, by code.
extension HeteroKVError {
  static func notFound(_ m: String) -> Self { .init(.notFound, m) }
  static func failedPrecondition(_ m: String) -> Self { .init(.failedPrecondition, m) }
  static func resourceExhausted(_ m: String) -> Self { .init(.resourceExhausted, m) }
  static func unavailable(_ m: String) -> Self { .init(.unavailable, m) }
}
