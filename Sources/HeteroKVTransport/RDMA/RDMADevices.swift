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

  /// Loads librdmacm and libibverbs (at run time: the build needs neither) and asks libibverbs
  /// for the device list. Without the libraries, or on a kernel without RDMA support (the
  /// call fails with ENOSYS), or with support but no device, RDMA is unavailable and
  /// `reason` says which.
  public static func probe() -> RDMAAvailability {
    var message = [CChar](repeating: 0, count: 512)
    guard hkv_rdma_load(&message, message.count) == 0 else {
      let text = message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
      return RDMAAvailability(
        isAvailable: false, devices: [], reason: "no RDMA libraries on this host: \(text)")
    }
    var count: Int32 = 0
    guard let list = hkv_ibv_get_device_list(&count) else {
      let code = errno
      return RDMAAvailability(
        isAvailable: false, devices: [],
        reason:
          "no RDMA support on this host: ibv_get_device_list failed (\(String(cString: strerror(code))))"
      )
    }
    defer { hkv_ibv_free_device_list(list) }
    var names: [String] = []
    for i in 0..<Int(count) {
      if let device = list[i], let name = hkv_ibv_get_device_name(device) {
        names.append(String(cString: name))
      }
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
