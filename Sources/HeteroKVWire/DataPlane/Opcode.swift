/// The operations of the data plane. A response carries its request's opcode.
public enum Opcode: UInt8, Sendable, Hashable, CaseIterable {
  /// Append a batch of rows to a shard, atomically.
  case put = 1
  /// Drop a shard, a sequence or a namespace.
  case drop = 2
  /// Return rows of a shard by token index.
  case gather = 3
  /// Compute attention over chosen rows where they are stored and return a mergeable partial.
  case partialAttention = 4
  /// Capacity, use and counts.
  case stats = 5
  /// An empty round trip, for liveness and latency.
  case ping = 6
  /// Ask for a one-use nonce to prove a credential over (the first frame of a connection to
  /// a node that requires one).
  case challenge = 7
  /// Prove a tenant's credential over the nonce (HMAC-SHA256); the connection then acts for
  /// that tenant.
  case authenticate = 8

  /// A lower-case name for logs and metrics labels.
  public var name: String {
    switch self {
    case .put: "put"
    case .drop: "drop"
    case .gather: "gather"
    case .partialAttention: "partial_attention"
    case .stats: "stats"
    case .ping: "ping"
    case .challenge: "challenge"
    case .authenticate: "authenticate"
    }
  }
}
