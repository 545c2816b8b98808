import HeteroKVCore

/// The refusal a standby coordinator answers with, naming the leader so that clients go
/// there; ``leader(in:)`` reads the address back.
public enum CoordinatorRedirect {
  /// The error for a standby `id` while `leader` (id, address) leads, or none is known.
  public static func error(standby id: String, leader: (id: String, address: String)?)
    -> HeteroKVError
  {
    guard let leader else {
      return HeteroKVError(
        .unavailable, "coordinator \(id) is standing by and no leader is known yet; retry")
    }
    return HeteroKVError(
      .unavailable,
      "coordinator \(id) is standing by; the leader is \(leader.id) at \(leader.address)")
  }

  /// The leader's address in a redirect's message, if it is one.
  public static func leader(in message: String) -> String? {
    guard let range = message.range(of: "; the leader is ") else { return nil }
    let rest = message[range.upperBound...]
    guard let at = rest.range(of: " at ") else { return nil }
    let address = rest[at.upperBound...].prefix { !$0.isWhitespace && $0 != ")" }
    return address.isEmpty ? nil : String(address)
  }
}
