import Foundation
import HeteroKVCore

/// The manifest of a trace directory (docs/trace-format.md).
public struct TraceManifest: Sendable, Codable, Hashable {
  /// Always "heterokv-trace".
  public var format: String
  /// Format version (1).
  public var version: Int
  /// The model the trace came from (informative).
  public var model: String
  /// Element type of every array.
  public var dtype: TraceDType
  public var geometry: Geometry
  /// Prefill tokens n.
  public var prefillTokens: Int
  /// Decode steps T.
  public var decodeSteps: Int
  /// Model layer numbers of the dumped layers, in directory order (informative).
  public var layers: [Int]?
  /// Queries and keys are post-RoPE; must be true.
  public var ropeApplied: Bool

  public struct Geometry: Sendable, Codable, Hashable {
    /// Layers dumped (directories `layer_000` ...).
    public var layers: Int
    public var queryHeads: Int
    public var kvHeads: Int
    public var headDim: Int
    enum CodingKeys: String, CodingKey {
      case layers
      case queryHeads = "query_heads"
      case kvHeads = "kv_heads"
      case headDim = "head_dim"
    }
  }

  enum CodingKeys: String, CodingKey {
    case format, version, model, dtype, geometry, layers
    case prefillTokens = "prefill_tokens"
    case decodeSteps = "decode_steps"
    case ropeApplied = "rope_applied"
  }

  /// Limits that keep a hostile manifest from asking for absurd allocations.
  static let maxHeads = 1024
  static let maxHeadDim = 1024
}

/// A real attention trace on disk: `manifest.json` and per layer `layer_NNN/{q,k,v}_{prefill,
/// decode}.npy`. Layers are read on demand, memory-mapped.
public struct TraceWorkload: AttentionWorkload {
  public let directory: URL
  public let manifest: TraceManifest
  public let geometry: ModelGeometry
  public let observationWindow: Int

  /// Opens a trace, validating the manifest and the first layer's shapes.
  public init(directory: URL) throws {
    self.directory = directory
    let url = directory.appendingPathComponent("manifest.json")
    guard let data = FileManager.default.contents(atPath: url.path) else {
      throw HeteroKVError(.malformedInput, "\(url.path): missing or unreadable")
    }
    do {
      manifest = try JSONDecoder().decode(TraceManifest.self, from: data)
    } catch let DecodingError.keyNotFound(key, _) {
      throw HeteroKVError(.malformedInput, "\(url.path): missing key '\(key.stringValue)'")
    } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context)
    {
      let path = context.codingPath.map(\.stringValue).joined(separator: ".")
      throw HeteroKVError(
        .malformedInput, "\(url.path): bad value at '\(path)': \(context.debugDescription)")
    } catch let DecodingError.dataCorrupted(context) {
      throw HeteroKVError(.malformedInput, "\(url.path): \(context.debugDescription)")
    } catch {
      throw HeteroKVError(.malformedInput, "\(url.path): \(error)", cause: error)
    }
    func bad(_ why: String) -> HeteroKVError {
      HeteroKVError(.malformedInput, "\(url.path): \(why)")
    }
    guard manifest.format == "heterokv-trace" else {
      throw bad("format is '\(manifest.format)', expected 'heterokv-trace'")
    }
    guard manifest.version == 1 else { throw bad("unsupported version \(manifest.version)") }
    guard manifest.ropeApplied else {
      throw bad("rope_applied must be true: dump post-RoPE queries and keys")
    }
    let g = manifest.geometry
    guard (1...TraceManifest.maxHeads).contains(g.queryHeads),
      (1...TraceManifest.maxHeads).contains(g.kvHeads),
      (2...TraceManifest.maxHeadDim).contains(g.headDim), g.layers > 0
    else { throw bad("geometry out of range: \(g)") }
    guard manifest.prefillTokens > 0, manifest.decodeSteps > 0 else {
      throw bad("prefill_tokens and decode_steps must be positive")
    }
    if let layers = manifest.layers, layers.count != g.layers {
      throw bad("'layers' lists \(layers.count) layers but geometry.layers is \(g.layers)")
    }
    do {
      geometry = try ModelGeometry(
        name: manifest.model, layers: g.layers, queryHeads: g.queryHeads, kvHeads: g.kvHeads,
        headDim: g.headDim)
    } catch let e as HeteroKVError {
      throw bad(e.message)
    }
    let q = try NPYArray(contentsOf: Self.file(directory, 0, "q_prefill"), expected: manifest.dtype)
    guard q.shape.count == 3, q.shape[0] >= 1, q.shape[0] <= manifest.prefillTokens else {
      throw HeteroKVError(
        .malformedInput,
        "\(Self.file(directory, 0, "q_prefill").path): shape \(q.shape), expected [P <= \(manifest.prefillTokens), \(g.queryHeads), \(g.headDim)]"
      )
    }
    observationWindow = q.shape[0]
  }

  static func file(_ dir: URL, _ layer: Int, _ name: String) -> URL {
    dir.appendingPathComponent(String(format: "layer_%03d", layer)).appendingPathComponent(
      "\(name).npy")
  }

  public var contextLength: Int { manifest.prefillTokens }
  public var decodeSteps: Int { manifest.decodeSteps }
  public var summary: String {
    "trace \(directory.lastPathComponent) (\(manifest.model), \(geometry.layers) layers, "
      + "\(contextLength) tokens, \(decodeSteps) decode steps, \(manifest.dtype.rawValue))"
  }

  /// Real traces have no separate calibration sample: HeteroCache profiles on the trace
  /// itself (an optimistic setting, said so in the docs).
  public func calibrationSample() throws -> (any AttentionWorkload)? { nil }

  public func layer(_ index: Int) throws -> LayerTrace {
    guard index >= 0, index < geometry.layers else {
      throw HeteroKVError.invalid("layer \(index) is outside 0..<\(geometry.layers)")
    }
    let n = contextLength
    let t = decodeSteps
    let hq = geometry.queryHeads
    let hk = geometry.kvHeads
    let d = geometry.headDim
    let g = geometry.groupSize
    func open(_ name: String, _ shape: [Int]) throws -> NPYArray {
      let a = try NPYArray(contentsOf: Self.file(directory, index, name), expected: manifest.dtype)
      try a.require(shape: shape)
      return a
    }
    let qp = try open("q_prefill", [observationWindow, hq, d])
    let kp = try open("k_prefill", [n, hk, d])
    let vp = try open("v_prefill", [n, hk, d])
    let qd = try open("q_decode", [t, hq, d])
    let kd = try open("k_decode", [t, hk, d])
    let vd = try open("v_decode", [t, hk, d])
    let heads = try parallelMap(hk) { h in
      // Query heads h*g ..< (h+1)*g share KV head h.
      func rows(_ a: NPYArray, count: Int, heads: Int, first: Int, width: Int) throws -> [Float] {
        var out = [Float]()
        out.reserveCapacity(count * width * d)
        for r in 0..<count {
          let start = (r * heads + first) * d
          out += try a.floats(start..<start + width * d)
        }
        return out
      }
      let keys = try HalfMatrix(rows(kp, count: n, heads: hk, first: h, width: 1), cols: d)
      let values = try HalfMatrix(rows(vp, count: n, heads: hk, first: h, width: 1), cols: d)
      let observation = try rows(qp, count: observationWindow, heads: hq, first: h * g, width: g)
      var dq: [[Float]] = []
      var dk: [[Float]] = []
      var dv: [[Float]] = []
      for s in 0..<t {
        dq.append(try qd.floats((s * hq + h * g) * d..<(s * hq + (h + 1) * g) * d))
        dk.append(try kd.floats((s * hk + h) * d..<(s * hk + h + 1) * d))
        dv.append(try vd.floats((s * hk + h) * d..<(s * hk + h + 1) * d))
      }
      return HeadTrace(
        keys: keys, values: values, observationQueries: observation, decodeQueries: dq,
        decodeKeys: dk, decodeValues: dv)
    }
    return LayerTrace(layer: index, heads: heads)
  }

  /// Writes any workload in the trace format (used to share synthetic data and by tests).
  public static func write(
    _ workload: any AttentionWorkload, to directory: URL, dtype: TraceDType = .float16
  ) throws {
    let fm = FileManager.default
    try fm.createDirectory(at: directory, withIntermediateDirectories: true)
    let g = workload.geometry
    let manifest = TraceManifest(
      format: "heterokv-trace", version: 1, model: g.name, dtype: dtype,
      geometry: .init(
        layers: g.layers, queryHeads: g.queryHeads, kvHeads: g.kvHeads, headDim: g.headDim),
      prefillTokens: workload.contextLength, decodeSteps: workload.decodeSteps,
      layers: Array(0..<g.layers), ropeApplied: true)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(manifest).write(to: directory.appendingPathComponent("manifest.json"))
    let d = g.headDim
    for l in 0..<g.layers {
      let layer = try workload.layer(l)
      try fm.createDirectory(
        at: file(directory, l, "x").deletingLastPathComponent(), withIntermediateDirectories: true)
      let w = workload.observationWindow
      let n = workload.contextLength
      let t = workload.decodeSteps
      // Interleave heads: [rows][heads][d].
      func interleave(_ count: Int, _ perHead: (Int, Int) -> ArraySlice<Float>, heads: Int)
        -> [Float]
      {
        var out = [Float]()
        out.reserveCapacity(count * heads * d)
        for r in 0..<count { for h in 0..<heads { out += perHead(h, r) } }
        return out
      }
      let gs = g.groupSize
      let keys = layer.heads.map { $0.keys.floats() }
      let values = layer.heads.map { $0.values.floats() }
      let arrays: [(String, [Float], [Int])] = [
        (
          "q_prefill",
          interleave(
            w,
            { h, r in
              let head = layer.heads[h / gs]
              let qh = h % gs
              return head.observationQueries[(r * gs + qh) * d..<(r * gs + qh + 1) * d]
            }, heads: g.queryHeads), [w, g.queryHeads, d]
        ),
        (
          "k_prefill", interleave(n, { h, r in keys[h][r * d..<(r + 1) * d] }, heads: g.kvHeads),
          [n, g.kvHeads, d]
        ),
        (
          "v_prefill", interleave(n, { h, r in values[h][r * d..<(r + 1) * d] }, heads: g.kvHeads),
          [n, g.kvHeads, d]
        ),
        (
          "q_decode",
          interleave(
            t,
            { h, r in
              layer.heads[h / gs].decodeQueries[r][(h % gs) * d..<(h % gs + 1) * d]
            }, heads: g.queryHeads), [t, g.queryHeads, d]
        ),
        (
          "k_decode",
          interleave(t, { h, r in layer.heads[h].decodeKeys[r][...] }, heads: g.kvHeads),
          [t, g.kvHeads, d]
        ),
        (
          "v_decode",
          interleave(t, { h, r in layer.heads[h].decodeValues[r][...] }, heads: g.kvHeads),
          [t, g.kvHeads, d]
        ),
      ]
      for (name, values, shape) in arrays {
        try NPYArray.encode(values, shape: shape, dtype: dtype).write(to: file(directory, l, name))
      }
    }
  }
}
