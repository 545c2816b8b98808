import CRDMA

#if canImport(Glibc)
  import Glibc
#endif

/// Whether this host can carry the data plane over RDMA, and if not, why not.
public struct RDMAAvailability: Sendable, Hashable {
  /// True when at least one RDMA device is present.
  public var isAvailable: Bool
  /// Names of the devices found.
  public var devices: [String]
  /// A sentence for the log when RDMA is not available.
  public var reason: String

  /// Asks libibverbs for the device list. On a kernel without RDMA support the call fails
  /// (ENOSYS); on one with support but no device it returns an empty list.
  public static func probe() -> RDMAAvailability {
    var count: Int32 = 0
    guard let list = ibv_get_device_list(&count) else {
      let code = errno
      return RDMAAvailability(
        isAvailable: false, devices: [],
        reason:
          "no RDMA support on this host: ibv_get_device_list failed (\(String(cString: strerror(code))))"
      )
    }
    defer { ibv_free_device_list(list) }
    var names: [String] = []
    for i in 0..<Int(count) {
      if let device = list[i] { names.append(String(cString: ibv_get_device_name(device))) }
    }
    if names.isEmpty {
      return RDMAAvailability(
        isAvailable: false, devices: [],
        reason:
          "no RDMA device found (the kernel supports RDMA, but no device or soft-RoCE link is configured)"
      )
    }
    return RDMAAvailability(
      isAvailable: true, devices: names, reason: "RDMA devices: \(names.joined(separator: ", "))")
  }
}
