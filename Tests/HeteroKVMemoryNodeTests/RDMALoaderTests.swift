import Foundation
import HeteroKVTransport
import Testing

@Suite("RDMA libraries loaded at run time")
struct RDMALoaderTests {
  /// Whether the shared library `name` is where Debian's runtime package puts it.
  func installed(_ name: String) -> Bool {
    [
      "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu",
      "/usr/lib",
    ]
    .contains { FileManager.default.fileExists(atPath: "\($0)/\(name)") }
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
    // Asking twice gives the same answer (the libraries are loaded once).
    #expect(RDMAAvailability.probe() == probe)
  }
}
