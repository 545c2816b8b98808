/// A `host:port` pair as written in config files and flags (`[::1]:7000` for IPv6).
public struct HostPort: Sendable, Hashable, CustomStringConvertible,
  LosslessStringConvertible
{
  /// Host name or address literal.
  public var host: String
  /// TCP port (0 asks the system for a free one when listening).
  public var port: Int

  /// A pair from its parts.
  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  /// Parses `host:port`; nil when there is no port or it is outside 0...65535.
  public init?(_ text: String) {
    guard let colon = text.lastIndex(of: ":") else { return nil }
    var host = String(text[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]),
      (0...65535).contains(port)
    else { return nil }
    self.init(host: host, port: port)
  }

  public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
