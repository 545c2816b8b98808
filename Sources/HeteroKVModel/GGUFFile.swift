import HeteroKVCore
import CHeteroKVKernels
import Foundation

/// One metadata value of a GGUF file.
public enum GGUFValue: Sendable {
  case integer(Int64)
  case unsigned(UInt64)
  case float(Double)
  case bool(Bool)
  case string(String)
  case array([GGUFValue])

  /// The value as an integer, when it is one.
  public var int: Int? {
    switch self {
    case .integer(let v): Int(exactly: v)
    case .unsigned(let v): Int(exactly: v)
    default: nil
    }
  }

  /// The value as a number, when it is one.
  public var double: Double? {
    switch self {
    case .float(let v): v
    case .integer(let v): Double(v)
    case .unsigned(let v): Double(v)
    default: nil
    }
  }

  public var string: String? { if case .string(let s) = self { s } else { nil } }
  public var array: [GGUFValue]? { if case .array(let a) = self { a } else { nil } }
}

/// The ggml element types this reader decodes.
public enum GGMLType: UInt32, Sendable {
  case f32 = 0
  case f16 = 1
  case q4_1 = 3
  case q8_0 = 8

  /// Elements per block and bytes per block.
  var block: (elements: Int, bytes: Int) {
    switch self {
    case .f32: (1, 4)
    case .f16: (1, 2)
    case .q4_1: (32, 20)
    case .q8_0: (32, 34)
    }
  }
}

/// Where one tensor's data lies in the file.
public struct GGUFTensorInfo: Sendable {
  public var name: String
  /// ne[0] first: the row length, then the row count.
  public var dimensions: [Int]
  public var type: GGMLType
  /// Offset of the data from the start of the file.
  public var offset: Int
  /// Elements.
  public var count: Int { dimensions.reduce(1, *) }
  /// Bytes of data.
  public var byteCount: Int { count / type.block.elements * type.block.bytes }
}

/// A GGUF (v2 or v3) model file, memory-mapped: its metadata and tensor index, checked against
/// the file's size before anything is read, and tensors decoded to f32 on request. A truncated
/// or corrupt file is a `HeteroKVError` naming what is wrong.
public struct GGUFFile: Sendable {
  public let path: String
  public let version: UInt32
  public let metadata: [String: GGUFValue]
  public let tensors: [String: GGUFTensorInfo]
  let data: Data

  /// Opens and indexes `path`.
  public init(path: String) throws(HeteroKVError) {
    let data: Data
    do {
      data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
    } catch {
      throw HeteroKVError(
        .malformedInput, "cannot read the model file \(path): \(error.localizedDescription)")
    }
    try self.init(data: data, path: path)
  }

  /// Indexes a GGUF image held in memory.
  public init(data: Data, path: String = "(memory)") throws(HeteroKVError) {
    self.path = path
    self.data = data
    var r = ByteReader(data: data, path: path)
    guard try r.bytes(4, "magic") == Array("GGUF".utf8) else {
      throw HeteroKVError(.malformedInput, "\(path) is not a GGUF file (bad magic)")
    }
    version = try r.u32("version")
    guard version == 2 || version == 3 else {
      throw HeteroKVError(
        .malformedInput, "\(path): GGUF version \(version) is not supported (2 or 3)")
    }
    let tensorCount = try r.count("tensor count", limit: 1 << 20)
    let kvCount = try r.count("metadata count", limit: 1 << 20)
    var metadata: [String: GGUFValue] = [:]
    for _ in 0..<kvCount {
      let key = try r.string("metadata key")
      let type = try r.u32("type of \(key)")
      metadata[key] = try r.value(type: type, what: key, depth: 0)
    }
    self.metadata = metadata
    var infos: [GGUFTensorInfo] = []
    for _ in 0..<tensorCount {
      let name = try r.string("tensor name")
      let rank = Int(try r.u32("rank of \(name)"))
      guard (1...4).contains(rank) else {
        throw HeteroKVError(.malformedInput, "\(path): tensor \(name) has rank \(rank)")
      }
      var dims: [Int] = []
      for _ in 0..<rank { dims.append(try r.count("dimension of \(name)", limit: 1 << 31)) }
      let rawType = try r.u32("type of \(name)")
      guard let type = GGMLType(rawValue: rawType) else {
        throw HeteroKVError(
          .malformedInput,
          "\(path): tensor \(name) has ggml type \(rawType), not F32, F16, Q4_1 or Q8_0")
      }
      let offset = try r.count("offset of \(name)", limit: Int.max / 2)
      guard dims[0] % type.block.elements == 0 else {
        throw HeteroKVError(
          .malformedInput, "\(path): tensor \(name) rows of \(dims[0]) do not split into blocks")
      }
      infos.append(GGUFTensorInfo(name: name, dimensions: dims, type: type, offset: offset))
    }
    let alignment = metadata["general.alignment"]?.int ?? 32
    guard alignment > 0, alignment % 8 == 0 else {
      throw HeteroKVError(
        .malformedInput, "\(path): alignment \(alignment) is not a positive multiple of 8")
    }
    let start = (r.position + alignment - 1) / alignment * alignment
    var tensors: [String: GGUFTensorInfo] = [:]
    for var info in infos {
      info.offset += start
      guard info.offset + info.byteCount <= data.count else {
        throw HeteroKVError(
          .malformedInput,
          "\(path) is truncated: tensor \(info.name) needs bytes \(info.offset)..<\(info.offset + info.byteCount), the file has \(data.count)"
        )
      }
      tensors[info.name] = info
    }
    self.tensors = tensors
  }

  /// The tensor `name` decoded to f32, row-major `[rows][ne0]`.
  public func floats(_ name: String) throws(HeteroKVError) -> [Float] {
    guard let info = tensors[name] else {
      throw HeteroKVError(.malformedInput, "\(path) has no tensor \(name)")
    }
    let n = info.count
    return data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> [Float] in
      let base = raw.baseAddress!.advanced(by: info.offset)
      return [Float](unsafeUninitializedCapacity: n) { out, count in
        Dequantize.decode(info.type, from: base, count: n, into: out.baseAddress!)
        count = n
      }
    }
  }

  /// The tensor `name`, a matrix `[rows][cols]`, in its own block format (no dequantization):
  /// what the quantized matrix products read.
  public func matrix(_ name: String, rows: Int, cols: Int) throws(HeteroKVError) -> WeightMatrix {
    guard let info = tensors[name] else {
      throw HeteroKVError(.malformedInput, "\(path) has no tensor \(name)")
    }
    guard info.dimensions.first == cols, info.count == rows * cols else {
      throw HeteroKVError(
        .malformedInput,
        "\(path): \(name) has dimensions \(info.dimensions), expected [\(cols), \(rows)]")
    }
    let bytes = data.withUnsafeBytes { raw in
      Array(UnsafeRawBufferPointer(rebasing: raw[info.offset..<(info.offset + info.byteCount)]))
    }
    return WeightMatrix(type: info.type, rows: rows, cols: cols, bytes: bytes)
  }

  /// A metadata value, or an error naming the missing key.
  public func require(_ key: String) throws(HeteroKVError) -> GGUFValue {
    guard let v = metadata[key] else {
      throw HeteroKVError(.malformedInput, "\(path) has no metadata \(key)")
    }
    return v
  }
}

/// Bounded reads of the header; every length is checked against what is left.
struct ByteReader {
  let data: Data
  let path: String
  var position = 0

  init(data: Data, path: String) {
    self.data = data
    self.path = path
  }

  mutating func bytes(_ n: Int, _ what: String) throws(HeteroKVError) -> [UInt8] {
    guard n >= 0, position + n <= data.count else {
      throw HeteroKVError(
        .malformedInput,
        "\(path) is truncated in its header (reading \(what) at byte \(position))")
    }
    defer { position += n }
    return [UInt8](data[(data.startIndex + position)..<(data.startIndex + position + n)])
  }

  mutating func integer<T: FixedWidthInteger>(_ what: String, _: T.Type) throws(HeteroKVError) -> T
  {
    let b = try bytes(MemoryLayout<T>.size, what)
    var v: T = 0
    for (i, byte) in b.enumerated() { v |= T(truncatingIfNeeded: byte) << (8 * i) }
    return v
  }

  mutating func u32(_ what: String) throws(HeteroKVError) -> UInt32 {
    try integer(what, UInt32.self)
  }

  mutating func count(_ what: String, limit: Int) throws(HeteroKVError) -> Int {
    let v = try integer(what, UInt64.self)
    guard v <= UInt64(limit) else {
      throw HeteroKVError(.malformedInput, "\(path): \(what) \(v) is out of range")
    }
    return Int(v)
  }

  mutating func string(_ what: String) throws(HeteroKVError) -> String {
    let n = try count("length of \(what)", limit: data.count - position)
    return String(decoding: try bytes(n, what), as: UTF8.self)
  }

  mutating func value(type: UInt32, what: String, depth: Int) throws(HeteroKVError) -> GGUFValue {
    switch type {
    case 0: return .unsigned(UInt64(try integer(what, UInt8.self)))
    case 1: return .integer(Int64(try integer(what, Int8.self)))
    case 2: return .unsigned(UInt64(try integer(what, UInt16.self)))
    case 3: return .integer(Int64(try integer(what, Int16.self)))
    case 4: return .unsigned(UInt64(try integer(what, UInt32.self)))
    case 5: return .integer(Int64(try integer(what, Int32.self)))
    case 6: return .float(Double(Float(bitPattern: try integer(what, UInt32.self))))
    case 7: return .bool(try integer(what, UInt8.self) != 0)
    case 8: return .string(try string(what))
    case 9:
      guard depth < 2 else {
        throw HeteroKVError(.malformedInput, "\(path): \(what) nests arrays too deep")
      }
      let elementType = try u32("element type of \(what)")
      let n = try count("length of \(what)", limit: data.count - position)
      var items: [GGUFValue] = []
      items.reserveCapacity(n)
      for _ in 0..<n { items.append(try value(type: elementType, what: what, depth: depth + 1)) }
      return .array(items)
    case 10: return .unsigned(try integer(what, UInt64.self))
    case 11: return .integer(try integer(what, Int64.self))
    case 12: return .float(Double(bitPattern: try integer(what, UInt64.self)))
    default:
      throw HeteroKVError(.malformedInput, "\(path): metadata \(what) has unknown type \(type)")
    }
  }
}

/// Block formats to f32.
enum Dequantize {
  static func decode(
    _ type: GGMLType, from base: UnsafeRawPointer, count n: Int,
    into out: UnsafeMutablePointer<Float>
  ) {
    func half(_ p: UnsafeRawPointer) -> Float {
      Float(Float16(bitPattern: p.loadUnaligned(as: UInt16.self)))
    }
    switch type {
    case .f32:
      for i in 0..<n { out[i] = base.loadUnaligned(fromByteOffset: i * 4, as: Float.self) }
    case .f16:
      for i in 0..<n { out[i] = half(base + i * 2) }
    case .q4_1:
      // d (f16), m (f16), 16 bytes: element j is the low nibble of byte j, element j + 16 the
      // high nibble; value = d * q + m.
      for b in 0..<(n / 32) {
        let block = base + b * 20
        let d = half(block)
        let m = half(block + 2)
        let q = (block + 4).assumingMemoryBound(to: UInt8.self)
        let o = out + b * 32
        for j in 0..<16 {
          o[j] = d * Float(q[j] & 0x0F) + m
          o[j + 16] = d * Float(q[j] >> 4) + m
        }
      }
    case .q8_0:
      for b in 0..<(n / 32) {
        let block = base + b * 34
        let d = half(block)
        let q = (block + 2).assumingMemoryBound(to: Int8.self)
        let o = out + b * 32
        for j in 0..<32 { o[j] = d * Float(q[j]) }
      }
    }
  }
}

/// A linear layer's weights `[rows][cols]` kept in their GGUF block format (Q4_1 is 5 bits a
/// weight where f32 is 32): decode reads every weight once per token, so fewer bytes is
/// faster decode, and the model takes about its file's size in memory.
public struct WeightMatrix: Sendable {
  public let type: GGMLType
  public let rows: Int
  public let cols: Int
  let bytes: [UInt8]

  /// Bytes of one row.
  var rowBytes: Int { bytes.count / rows }

  /// Row `index` in f32 (an embedding lookup).
  func row(_ index: Int) -> [Float] {
    [Float](unsafeUninitializedCapacity: cols) { out, count in
      bytes.withUnsafeBytes {
        hkv_dequantize_row($0.baseAddress!, Int32(type.rawValue), cols, index, out.baseAddress!)
      }
      count = cols
    }
  }
}
