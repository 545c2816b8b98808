import Foundation
import HeteroKVCore

/// Element types a trace may use.
public enum TraceDType: String, Sendable, Codable {
  case float16
  case bfloat16
  case float32

  var byteWidth: Int { self == .float32 ? 4 : 2 }
}

/// A NumPy `.npy` array (format 1.0-3.0, little-endian, C order) of fp16, bf16 (stored as
/// uint16 bit patterns) or fp32, read without copying the payload until converted.
public struct NPYArray: Sendable {
  /// The shape from the header.
  public var shape: [Int]
  /// Element type.
  public var dtype: TraceDType
  let data: Data
  let payloadOffset: Int
  let name: String

  /// Element count.
  public var count: Int { shape.reduce(1, *) }

  /// Parses `data` (named `name` in errors). `expected` says how a 2-byte payload is read:
  /// `<u2` arrays are bf16 bit patterns only when the manifest says bfloat16.
  public init(data: Data, name: String, expected: TraceDType) throws {
    func bad(_ why: String) -> HeteroKVError { HeteroKVError(.malformedInput, "\(name): \(why)") }
    let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]
    guard data.count >= 10, Array(data.prefix(6)) == magic else {
      throw bad("not a NumPy .npy file (bad magic)")
    }
    let major = data[data.startIndex + 6]
    let headerLength: Int
    let headerStart: Int
    switch major {
    case 1:
      headerLength = Int(data[data.startIndex + 8]) | Int(data[data.startIndex + 9]) << 8
      headerStart = 10
    case 2, 3:
      guard data.count >= 12 else { throw bad("truncated header") }
      headerLength = (0..<4).reduce(0) { $0 | Int(data[data.startIndex + 8 + $1]) << (8 * $1) }
      headerStart = 12
    default:
      throw bad("unsupported .npy format version \(major)")
    }
    guard headerLength < 1 << 20, data.count >= headerStart + headerLength else {
      throw bad("truncated header (\(headerLength) bytes declared)")
    }
    let header = String(
      decoding: data[
        (data.startIndex + headerStart)..<(data.startIndex + headerStart + headerLength)],
      as: UTF8.self)
    guard let descr = Self.field("descr", in: header) else { throw bad("header has no descr") }
    let type = descr.trimmingCharacters(in: CharacterSet(charactersIn: "'\" "))
    switch (type, expected) {
    case ("<f2", .float16), ("<f4", .float32), ("<u2", .bfloat16), ("<V2", .bfloat16),
      ("<i2", .bfloat16):
      dtype = expected
    default:
      throw bad("element type \(type) does not match the manifest's \(expected.rawValue)")
    }
    guard let order = Self.field("fortran_order", in: header), order.contains("False") else {
      throw bad("only C-order arrays are supported (fortran_order must be False)")
    }
    guard let shapeText = Self.field("shape", in: header) else { throw bad("header has no shape") }
    let dims = shapeText.trimmingCharacters(in: CharacterSet(charactersIn: "() "))
      .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    var shape: [Int] = []
    for dim in dims {
      guard let v = Int(dim), v >= 0, v < 1 << 40 else { throw bad("bad shape entry '\(dim)'") }
      shape.append(v)
    }
    self.shape = shape
    self.data = data
    self.payloadOffset = headerStart + headerLength
    self.name = name
    let needed = shape.reduce(1, *) * dtype.byteWidth
    guard data.count - payloadOffset >= needed else {
      throw bad(
        "truncated payload: \(data.count - payloadOffset) bytes, shape \(shape) needs \(needed)")
    }
  }

  /// Reads a file, memory-mapped.
  public init(contentsOf url: URL, expected: TraceDType) throws {
    let data: Data
    do {
      data = try Data(contentsOf: url, options: .alwaysMapped)
    } catch {
      throw HeteroKVError(
        .malformedInput, "\(url.path): cannot read (\(error.localizedDescription))")
    }
    try self.init(data: data, name: url.path, expected: expected)
  }

  /// Throws unless the shape is exactly `expected`.
  public func require(shape expected: [Int]) throws {
    guard shape == expected else {
      throw HeteroKVError(.malformedInput, "\(name): shape \(shape), expected \(expected)")
    }
  }

  /// Elements `range` (flat, C order) as fp32; throws on NaN or infinity.
  public func floats(_ range: Range<Int>) throws -> [Float] {
    let base = data.startIndex + payloadOffset
    var out = [Float](repeating: 0, count: range.count)
    data.withUnsafeBytes { raw in
      let bytes = raw.baseAddress!.advanced(by: base - data.startIndex)
      switch dtype {
      case .float32:
        for (i, e) in range.enumerated() {
          out[i] = Float(
            bitPattern: bytes.loadUnaligned(fromByteOffset: e * 4, as: UInt32.self).littleEndian)
        }
      case .float16:
        for (i, e) in range.enumerated() {
          out[i] = Float(
            Float16(
              bitPattern: bytes.loadUnaligned(fromByteOffset: e * 2, as: UInt16.self).littleEndian))
        }
      case .bfloat16:
        for (i, e) in range.enumerated() {
          let bits =
            UInt32(bytes.loadUnaligned(fromByteOffset: e * 2, as: UInt16.self).littleEndian) << 16
          out[i] = Float(bitPattern: bits)
        }
      }
    }
    if let bad = out.firstIndex(where: { !$0.isFinite }) {
      throw HeteroKVError(
        .nonFiniteInput,
        "\(name): non-finite value \(out[bad]) at element \(range.lowerBound + bad)")
    }
    return out
  }

  static func field(_ key: String, in header: String) -> String? {
    guard let r = header.range(of: "'\(key)':") ?? header.range(of: "\"\(key)\":") else {
      return nil
    }
    let rest = header[r.upperBound...]
    if key == "shape" {
      guard let open = rest.firstIndex(of: "("), let close = rest.firstIndex(of: ")") else {
        return nil
      }
      return String(rest[open...close])
    }
    let end = rest.firstIndex(of: ",") ?? rest.firstIndex(of: "}") ?? rest.endIndex
    return String(rest[..<end])
  }

  /// Encodes fp32 values as a `.npy` file of `dtype` with `shape` (format 1.0).
  public static func encode(_ values: [Float], shape: [Int], dtype: TraceDType) -> Data {
    let descr = dtype == .float32 ? "<f4" : dtype == .float16 ? "<f2" : "<u2"
    let shapeText =
      shape.count == 1
      ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
    var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
    let unpadded = 10 + header.utf8.count + 1
    header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
    var data = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0])
    let length = UInt16(header.utf8.count)
    data.append(contentsOf: [UInt8(length & 0xFF), UInt8(length >> 8)])
    data.append(contentsOf: header.utf8)
    data.reserveCapacity(data.count + values.count * dtype.byteWidth)
    for v in values {
      switch dtype {
      case .float32: withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) }
      case .float16:
        withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { data.append(contentsOf: $0) }
      case .bfloat16:
        let bits = UInt16(
          truncatingIfNeeded: (v.bitPattern &+ 0x7FFF &+ ((v.bitPattern >> 16) & 1)) >> 16)
        withUnsafeBytes(of: bits.littleEndian) { data.append(contentsOf: $0) }
      }
    }
    return data
  }
}
