import Foundation

#if canImport(Glibc)
  import Glibc
#endif
import HeteroKVTransport
import Testing

@Suite("RDMA libraries loaded at run time")
struct RDMALoaderTests {
  /// Whether the dynamic loader finds the shared library `name` (asked independently of
  /// the transport's loader).
  func installed(_ name: String) -> Bool {
    guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { return false }
    dlclose(handle)
    return true
  }

  @Test(
    "the build needs no RDMA headers: where librdmacm and libibverbs are installed they resolve, where not the probe names the package to install"
  )
  func probe() {
    let probe = RDMAAvailability.probe()
    if installed("librdmacm.so.1") && installed("libibverbs.so.1") {
      // Loaded: what is left to find out is whether the kernel and a device support RDMA.
      #expect(!probe.reason.hasPrefix("no RDMA libraries"), "\(probe.reason)")
    } else {
      #expect(!probe.isAvailable)
      #expect(probe.reason.hasPrefix("no RDMA libraries"), "\(probe.reason)")
      #expect(
        probe.reason.contains("install librdmacm1") || probe.reason.contains("install libibverbs1"),
        "\(probe.reason)")
    }
  }
}
