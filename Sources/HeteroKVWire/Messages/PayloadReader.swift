import HeteroKVCore
import NIOCore

/// Reads the fields of a payload, failing with a message that names the field when the
/// payload ends early. Lengths are checked against the bytes actually present before any
/// array is made, so a count field can never make the reader allocate more than it received.
struct PayloadReader {
  var buffer: ByteBuffer
  let what: String

  init(_ buffer: ByteBuffer, what: String) {
    self.buffer = buffer
    self.what = what
  }

  mutating func integer<T: FixedWidthInteger>(_ field: String, as: T.Type = T.self)
    throws(HeteroKVError) -> T
  {
    guard let v = buffer.readInteger(endianness: .little, as: T.self) else {
      throw HeteroKVError(.malformedFrame, "\(what): payload ends before \(field)")
    }
    return v
  }

  mutating func float(_ field: String) throws(HeteroKVError) -> Float {
    Float(bitPattern: try integer(field, as: UInt32.self))
  }

  /// A slice of `count` elements of `stride` bytes, after checking that they are present.
  mutating func slice(_ field: String, count: Int, stride: Int) throws(HeteroKVError)
    -> ByteBuffer
  {
    let (bytes, overflow) = count.multipliedReportingOverflow(by: stride)
    guard !overflow, count >= 0, bytes <= buffer.readableBytes else {
      throw HeteroKVError(
        .malformedFrame,
        "\(what): \(field) declares \(count) elements (\(count &* stride) bytes) but \(buffer.readableBytes) bytes remain"
      )
    }
    return buffer.readSlice(length: bytes)!
  }

  func finish() throws(HeteroKVError) {
    guard buffer.readableBytes == 0 else {
      throw HeteroKVError(
        .malformedFrame, "\(what): \(buffer.readableBytes) unexpected bytes after the last field")
    }
  }
}

extension ByteBuffer {
  /// Reads `count` little-endian 32-bit values into an array (the slice was length-checked).
  func readUInt32Array() -> [UInt32] {
    let n = readableBytes / 4
    return [UInt32](unsafeUninitializedCapacity: n) { out, done in
      withUnsafeReadableBytes { raw in
        for i in 0..<n {
          out[i] = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))
        }
      }
      done = n
    }
  }

  /// Reads little-endian fp32 values.
  func readFloatArray() -> [Float] {
    readUInt32Array().map { Float(bitPattern: $0) }
  }

  /// Reads fp16 values.
  func readHalfArray() -> [Float16] {
    let n = readableBytes / 2
    return [Float16](unsafeUninitializedCapacity: n) { out, done in
      withUnsafeReadableBytes { raw in
        UnsafeMutableRawBufferPointer(out).copyMemory(
          from: UnsafeRawBufferPointer(rebasing: raw[0..<n * 2]))
      }
      done = n
    }
  }

  mutating func writeUInt32Array(_ values: [UInt32]) {
    // One copy on a little-endian host (every host this runs on); a per-element write cost
    // 4% of a decode step's CPU.
    #if _endian(little)
      values.withUnsafeBytes { _ = writeBytes($0) }
    #else
      reserveCapacity(minimumWritableBytes: values.count * 4)
      for v in values { writeInteger(v, endianness: .little) }
    #endif
  }

  mutating func writeFloatArray(_ values: [Float]) {
    #if _endian(little)
      values.withUnsafeBytes { _ = writeBytes($0) }
    #else
      reserveCapacity(minimumWritableBytes: values.count * 4)
      for v in values { writeInteger(v.bitPattern, endianness: .little) }
    #endif
  }

  mutating func writeHalfArray(_ values: [Float16]) {
    values.withUnsafeBytes { _ = writeBytes($0) }
  }
}
