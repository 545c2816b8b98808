import Foundation

/// Tensors as the engine API carries them: little-endian fp16 or f32 elements back to back.
public enum TensorBytes {
  /// fp16 elements of `data`; nil when its length is not a whole number of them.
  public static func halves(_ data: Data) -> [Float16]? {
    guard data.count % 2 == 0 else { return nil }
    return data.withUnsafeBytes { raw in
      (0..<(data.count / 2)).map {
        Float16(
          bitPattern: UInt16(
            littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)))
      }
    }
  }

  /// f32 elements of `data`; nil when its length is not a whole number of them.
  public static func floats(_ data: Data) -> [Float]? {
    guard data.count % 4 == 0 else { return nil }
    return data.withUnsafeBytes { raw in
      (0..<(data.count / 4)).map {
        Float(
          bitPattern: UInt32(
            littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
      }
    }
  }

  /// `values` as little-endian fp16 bytes.
  public static func data<C: Collection>(halves values: C) -> Data where C.Element == Float16 {
    var data = Data(count: values.count * 2)
    data.withUnsafeMutableBytes { raw in
      for (i, v) in values.enumerated() {
        raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: i * 2, as: UInt16.self)
      }
    }
    return data
  }

  /// `values` as little-endian f32 bytes.
  public static func data<C: Collection>(floats values: C) -> Data where C.Element == Float {
    var data = Data(count: values.count * 4)
    data.withUnsafeMutableBytes { raw in
      for (i, v) in values.enumerated() {
        raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
      }
    }
    return data
  }
}
