import HeteroKVTransport
import HeteroKVWire

/// Where a memory node's data plane is and how to reach it.
public struct MemoryNodeEndpoint: Sendable, Hashable {
  /// The node's id.
  public var id: String
  /// Its data-plane address.
  public var data: HostPort
  /// The transport it serves; RDMA is used only where this host has a device, TCP otherwise.
  public var transport: DataPlaneTransportKind

  public init(id: String, data: HostPort, transport: DataPlaneTransportKind = .tcp) {
    self.id = id
    self.data = data
    self.transport = transport
  }
}
