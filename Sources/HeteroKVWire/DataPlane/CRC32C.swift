import CHeteroKVKernels
import NIOCore

/// CRC-32C (Castagnoli), the checksum of every frame's payload; hardware-accelerated where
/// the CPU has SSE4.2.
public enum CRC32C {
  /// The checksum of `bytes`, continuing from `crc` (0 to start).
  public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0)
    -> UInt32
  {
    guard let base = bytes.baseAddress, !bytes.isEmpty else { return crc }
    return hkv_crc32c(crc, base, bytes.count)
  }

  /// The checksum of a buffer's readable bytes.
  public static func checksum(_ buffer: ByteBuffer) -> UInt32 {
    buffer.withUnsafeReadableBytes { checksum($0) }
  }

  /// The checksum of a byte array.
  public static func checksum(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { checksum($0) }
  }
}
