/// The transports a data plane can run over.
public enum DataPlaneTransportKind: String, Sendable, Hashable, CaseIterable {
  /// The framed protocol over TCP on SwiftNIO.
  case tcp
  /// The framed protocol over librdmacm's rsockets.
  case rdma
}
