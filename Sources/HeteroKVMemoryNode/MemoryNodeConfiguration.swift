import HeteroKVCore
import HeteroKVTransport
import HeteroKVWire

/// How a memory node runs: its id, where it listens, how much memory it may hold and over
/// which transport its data plane is served.
public struct MemoryNodeConfiguration: Sendable, Hashable {
  /// The node's id in the cluster.
  public var id: String
  /// Where the data plane listens (port 0: any free port).
  public var data: HostPort
  /// Where the gRPC control service listens (port 0: any free port).
  public var control: HostPort
  /// Capacity of the page pool in bytes.
  public var capacityBytes: Int
  /// Page size in bytes (a multiple of 64; a row must fit in a page).
  public var pageBytes: Int
  /// The data-plane transport asked for; RDMA falls back to TCP where no device exists.
  public var transport: DataPlaneTransportKind
  /// Bounds on frames.
  public var limits: DataPlaneLimits
  /// Who may connect to the data plane, how many at once, and how long they may be silent.
  /// Without tenants the node takes the control plane's token for the data plane too.
  public var server: DataPlaneServerOptions = .init()

  /// A configuration; 64 KiB pages by default.
  public init(
    id: String, data: HostPort, control: HostPort, capacityBytes: Int,
    pageBytes: Int = 64 << 10, transport: DataPlaneTransportKind = .tcp,
    limits: DataPlaneLimits = .standard
  ) {
    self.id = id
    self.data = data
    self.control = control
    self.capacityBytes = capacityBytes
    self.pageBytes = pageBytes
    self.transport = transport
    self.limits = limits
  }

  /// Checks the values; the error lists every problem.
  public func validate() throws(HeteroKVError) {
    var problems: [String] = []
    if id.isEmpty { problems.append("id is empty") }
    if capacityBytes <= 0 { problems.append("capacity must be positive, got \(capacityBytes)") }
    if pageBytes < 4096 || pageBytes % 64 != 0 {
      problems.append("page size must be a multiple of 64 of at least 4096 bytes, got \(pageBytes)")
    }
    if capacityBytes > 0 && pageBytes > 0 && capacityBytes < pageBytes {
      problems.append("capacity \(capacityBytes) is smaller than one page (\(pageBytes))")
    }
    guard problems.isEmpty else {
      throw HeteroKVError(
        .invalidArgument, "memory node \(id): " + problems.joined(separator: "; "))
    }
  }
}

/// Where a running node listens.
public struct MemoryNodeAddresses: Sendable, Hashable {
  /// The data plane.
  public var data: HostPort
  /// The gRPC control service.
  public var control: HostPort
  /// The transport actually served.
  public var transport: DataPlaneTransportKind
}
