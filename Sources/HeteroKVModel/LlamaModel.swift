import CHeteroKVKernels
import Foundation
import HeteroKVCore

/// The shape of a Llama-architecture model, from its GGUF metadata.
public struct LlamaConfiguration: Sendable, Hashable {
  public var layers: Int
  public var hidden: Int
  public var feedForward: Int
  public var queryHeads: Int
  public var kvHeads: Int
  public var headDim: Int
  public var vocabulary: Int
  public var ropeBase: Float
  public var normEpsilon: Float
  public var contextLength: Int

  /// The attention geometry HeteroKV caches.
  public var geometry: ModelGeometry {
    get throws {
      try ModelGeometry(
        name: "smollm2-135m", layers: layers, queryHeads: queryHeads, kvHeads: kvHeads,
        headDim: headDim)
    }
  }
}

/// Where a model's attention keeps its K/V and gets its outputs: the full cache, or HeteroKV.
public protocol ModelKVCache {
  /// Appends K/V `[tokens][kvHeads][d]` of `layer`, then returns the causal attention of
  /// `queries` `[tokens][queryHeads][d]` (the new tokens, in order) over everything the layer
  /// holds.
  mutating func appendAndAttend(
    layer: Int, keys: [Float], values: [Float], queries: [Float], tokens: Int
  )
    async throws -> [Float]
}

/// The uncompressed cache: every K/V row kept in fp16 (as llama.cpp's default cache and
/// HeteroKV's memory tier keep them), exact causal attention on the SIMD kernels.
public struct FullKVCache: ModelKVCache {
  let kvHeads: Int
  let queryHeads: Int
  let headDim: Int
  /// Per layer and KV head.
  private(set) var keys: [[HalfMatrix]]
  private(set) var values: [[HalfMatrix]]

  public init(configuration c: LlamaConfiguration) {
    kvHeads = c.kvHeads
    queryHeads = c.queryHeads
    headDim = c.headDim
    keys = Array(
      repeating: Array(repeating: HalfMatrix(cols: c.headDim), count: c.kvHeads), count: c.layers)
    values = keys
  }

  /// Tokens held by layer 0.
  public var count: Int { keys.first?.first?.rows ?? 0 }

  public mutating func appendAndAttend(
    layer: Int, keys k: [Float], values v: [Float], queries: [Float], tokens: Int
  ) async throws -> [Float] {
    try Self.append(k, to: &keys[layer], kvHeads: kvHeads, headDim: headDim)
    try Self.append(v, to: &values[layer], kvHeads: kvHeads, headDim: headDim)
    return try Self.causalAttention(
      queries: queries, tokens: tokens, keys: keys[layer], values: values[layer],
      queryHeads: queryHeads)
  }

  /// Appends rows `[tokens][kvHeads][d]` to per-head matrices.
  public static func append(
    _ rows: [Float], to heads: inout [HalfMatrix], kvHeads: Int, headDim d: Int
  )
    throws
  {
    let tokens = rows.count / (kvHeads * d)
    for h in 0..<kvHeads {
      var part = [Float](repeating: 0, count: tokens * d)
      for t in 0..<tokens {
        part.replaceSubrange(
          t * d..<(t + 1) * d, with: rows[((t * kvHeads + h) * d)..<((t * kvHeads + h + 1) * d)])
      }
      try heads[h].append(contentsOf: HalfMatrix(part, cols: d))
    }
  }

  /// Causal GQA attention of the last `tokens` positions over per-KV-head K/V: out
  /// `[tokens][queryHeads][d]`.
  public static func causalAttention(
    queries: [Float], tokens: Int, keys: [HalfMatrix], values: [HalfMatrix], queryHeads: Int
  ) throws -> [Float] {
    let kvHeads = keys.count
    let d = keys[0].cols
    let n = keys[0].rows
    let group = queryHeads / kvHeads
    let scale = 1 / Float(d).squareRoot()
    let rows = tokens * group
    // Query rows of KV head h, row r = token r / group, query head h * group + r % group.
    @Sendable func headQueries(_ h: Int, _ r0: Int, _ r1: Int) -> [Float] {
      var q = [Float](repeating: 0, count: (r1 - r0) * d)
      for r in r0..<r1 {
        let from = ((r / group) * queryHeads + h * group + r % group) * d
        for i in 0..<d { q[(r - r0) * d + i] = queries[from + i] * scale }
      }
      return q
    }
    var out = [Float](repeating: 0, count: tokens * queryHeads * d)
    if rows < 64 {
      // Decode: one pass over the fp16 rows per head is cheaper than converting them.
      let results = try parallelMap(kvHeads) { h -> [Float] in
        var p = Kernels.scores(
          queries: headQueries(h, 0, rows), heads: rows, keys: keys[h], scale: 1)
        let visible = (0..<rows).map { n - tokens + $0 / group + 1 }
        p.withUnsafeMutableBufferPointer {
          hkv_causal_softmax_rows($0.baseAddress!, rows, n, visible)
        }
        return Kernels.weightedSum(values: values[h], probabilities: p, heads: rows)
      }
      for h in 0..<kvHeads { scatter(results[h], rows: 0..<rows, head: h) }
      return out
    }
    // Prefill: keys [n][d] and values transposed [d][n] in f32, then blocks of query rows of
    // every head as two tiled matrix products (scores, then weights x values), spread over
    // the cores.
    let keyFloats = try parallelMap(kvHeads) { keys[$0].floats() }
    let valuesT = try parallelMap(kvHeads) { h -> [Float] in
      let v = values[h].floats()
      var t = [Float](repeating: 0, count: n * d)
      for j in 0..<n { for i in 0..<d { t[i * n + j] = v[j * d + i] } }
      return t
    }
    let block = 64
    let blocks = (rows + block - 1) / block
    let parts = try parallelMap(kvHeads * blocks) { job -> [Float] in
      let h = job / blocks
      let r0 = (job % blocks) * block
      let r1 = min(rows, r0 + block)
      let q = headQueries(h, r0, r1)
      var p = [Float](repeating: 0, count: (r1 - r0) * n)
      hkv_matmul_rows_f32(q, r1 - r0, d, keyFloats[h], n, &p, n)
      let visible = (r0..<r1).map { n - tokens + $0 / group + 1 }
      p.withUnsafeMutableBufferPointer {
        hkv_causal_softmax_rows($0.baseAddress!, r1 - r0, n, visible)
      }
      var o = [Float](repeating: 0, count: (r1 - r0) * d)
      hkv_matmul_rows_f32(p, r1 - r0, n, valuesT[h], d, &o, d)
      return o
    }
    for job in parts.indices {
      let r0 = (job % blocks) * block
      scatter(parts[job], rows: r0..<min(rows, r0 + block), head: job / blocks)
    }
    return out

    /// Puts per-head rows back in token-major order.
    func scatter(_ part: [Float], rows range: Range<Int>, head h: Int) {
      for r in range {
        let to = ((r / group) * queryHeads + h * group + r % group) * d
        out.replaceSubrange(
          to..<(to + d), with: part[((r - range.lowerBound) * d)..<((r - range.lowerBound + 1) * d)]
        )
      }
    }
  }
}

/// A Llama-architecture causal LM on the CPU, its matrices kept in the file's block formats
/// (Q4_1, Q8_0) and dequantized as products read them; activations in f32. RMSNorm, GQA
/// attention with RoPE on adjacent pairs, SwiGLU feed-forward, tied output.
/// Attention goes through a `ModelKVCache`, so the same forward pass runs on the full cache
/// and on HeteroKV.
public final class LlamaModel: Sendable {
  public let configuration: LlamaConfiguration
  let embedding: WeightMatrix
  let outputNorm: [Float]
  let output: WeightMatrix
  let blocks: [Block]

  struct Block: Sendable {
    var attentionNorm, ffnNorm: [Float]
    var q, k, v, o, gate, up, down: WeightMatrix
  }

  /// Loads `file` (metadata checked, every tensor decoded).
  public init(file: GGUFFile) throws(HeteroKVError) {
    func int(_ key: String) throws(HeteroKVError) -> Int {
      guard let v = try file.require(key).int, v > 0 else {
        throw HeteroKVError(.malformedInput, "\(file.path): \(key) is not a positive integer")
      }
      return v
    }
    guard try file.require("general.architecture").string == "llama" else {
      throw HeteroKVError(.malformedInput, "\(file.path): only the llama architecture is supported")
    }
    let hidden = try int("llama.embedding_length")
    let heads = try int("llama.attention.head_count")
    let config = LlamaConfiguration(
      layers: try int("llama.block_count"), hidden: hidden,
      feedForward: try int("llama.feed_forward_length"), queryHeads: heads,
      kvHeads: try int("llama.attention.head_count_kv"), headDim: hidden / heads,
      vocabulary: file.tensors["token_embd.weight"]?.dimensions.last ?? 0,
      ropeBase: Float(file.metadata["llama.rope.freq_base"]?.double ?? 10000),
      normEpsilon: Float(file.metadata["llama.attention.layer_norm_rms_epsilon"]?.double ?? 1e-5),
      contextLength: file.metadata["llama.context_length"]?.int ?? 2048)
    guard hidden % heads == 0, heads % config.kvHeads == 0, config.vocabulary > 0 else {
      throw HeteroKVError(.malformedInput, "\(file.path): inconsistent attention shape")
    }
    configuration = config
    func tensor(_ name: String, _ count: Int) throws(HeteroKVError) -> [Float] {
      let t = try file.floats(name)
      guard t.count == count else {
        throw HeteroKVError(
          .malformedInput, "\(file.path): \(name) has \(t.count) elements, expected \(count)")
      }
      return t
    }
    let kvWidth = config.kvHeads * config.headDim
    let ffn = config.feedForward
    embedding = try file.matrix("token_embd.weight", rows: config.vocabulary, cols: hidden)
    outputNorm = try tensor("output_norm.weight", hidden)
    output =
      file.tensors["output.weight"] != nil
      ? try file.matrix("output.weight", rows: config.vocabulary, cols: hidden) : embedding
    var blocks: [Block] = []
    for l in 0..<config.layers {
      let p = "blk.\(l)."
      blocks.append(
        Block(
          attentionNorm: try tensor(p + "attn_norm.weight", hidden),
          ffnNorm: try tensor(p + "ffn_norm.weight", hidden),
          q: try file.matrix(p + "attn_q.weight", rows: hidden, cols: hidden),
          k: try file.matrix(p + "attn_k.weight", rows: kvWidth, cols: hidden),
          v: try file.matrix(p + "attn_v.weight", rows: kvWidth, cols: hidden),
          o: try file.matrix(p + "attn_output.weight", rows: hidden, cols: hidden),
          gate: try file.matrix(p + "ffn_gate.weight", rows: ffn, cols: hidden),
          up: try file.matrix(p + "ffn_up.weight", rows: ffn, cols: hidden),
          down: try file.matrix(p + "ffn_down.weight", rows: hidden, cols: ffn)))
    }
    self.blocks = blocks
  }

  /// Logits `[vocabulary]` of the last of `tokens` (positions `0 ..< tokens.count`), the
  /// prompt run through the model `chunk` tokens at a time so the attention scores of a long
  /// prompt stay `chunk x context` per head.
  public func prefill<Cache: ModelKVCache>(
    _ tokens: [Int], cache: inout Cache, chunk: Int = 512
  ) async throws -> [Float] {
    precondition(chunk > 0 && !tokens.isEmpty)
    var logits: [Float] = []
    for start in stride(from: 0, to: tokens.count, by: chunk) {
      let part = Array(tokens[start..<min(tokens.count, start + chunk)])
      logits = try await forward(part, start: start, cache: &cache)
    }
    return logits
  }

  /// Logits `[vocabulary]` of the last of `tokens`, which sit at positions
  /// `start ..< start + tokens.count`; their K/V go into `cache`.
  public func forward<Cache: ModelKVCache>(
    _ tokens: [Int], start: Int, cache: inout Cache, allLogits: Bool = false
  ) async throws -> [Float] {
    let h = configuration.hidden
    let t = tokens.count
    let x = try await hiddenStates(tokens, start: start, cache: &cache)
    let rows = allLogits ? t : 1
    let last = Array(x[((t - rows) * h)...])
    let normed = rmsNorm(last, weight: outputNorm, tokens: rows)
    return Self.matmul(normed, tokens: rows, in: h, weights: output, out: configuration.vocabulary)
  }

  /// The residual stream `[tokens][hidden]` after the first `layers` blocks (all by default):
  /// what the output head reads, and what a single layer is checked by against a reference.
  public func hiddenStates<Cache: ModelKVCache>(
    _ tokens: [Int], start: Int, cache: inout Cache, layers: Int? = nil
  ) async throws -> [Float] {
    let c = configuration
    let t = tokens.count
    let h = c.hidden
    var x = [Float](repeating: 0, count: t * h)
    for (i, token) in tokens.enumerated() {
      guard token >= 0, token < c.vocabulary else {
        throw HeteroKVError(
          .malformedInput, "token id \(token) is outside the vocabulary of \(c.vocabulary)")
      }
      x.replaceSubrange(i * h..<(i + 1) * h, with: embedding.row(token))
    }
    let kvWidth = c.kvHeads * c.headDim
    for (l, b) in blocks.prefix(layers ?? blocks.count).enumerated() {
      let normed = rmsNorm(x, weight: b.attentionNorm, tokens: t)
      var q = Self.matmul(normed, tokens: t, in: h, weights: b.q, out: h)
      var k = Self.matmul(normed, tokens: t, in: h, weights: b.k, out: kvWidth)
      let v = Self.matmul(normed, tokens: t, in: h, weights: b.v, out: kvWidth)
      rope(&q, heads: c.queryHeads, tokens: t, start: start)
      rope(&k, heads: c.kvHeads, tokens: t, start: start)
      let attended = try await cache.appendAndAttend(
        layer: l, keys: k, values: v, queries: q, tokens: t)
      let o = Self.matmul(attended, tokens: t, in: h, weights: b.o, out: h)
      for i in x.indices { x[i] += o[i] }
      let n2 = rmsNorm(x, weight: b.ffnNorm, tokens: t)
      let gate = Self.matmul(n2, tokens: t, in: h, weights: b.gate, out: c.feedForward)
      let up = Self.matmul(n2, tokens: t, in: h, weights: b.up, out: c.feedForward)
      var act = [Float](repeating: 0, count: gate.count)
      for i in act.indices { act[i] = gate[i] / (1 + exp(-gate[i])) * up[i] }
      let down = Self.matmul(act, tokens: t, in: c.feedForward, weights: b.down, out: h)
      for i in x.indices { x[i] += down[i] }
    }
    return x
  }

  func rmsNorm(_ x: [Float], weight: [Float], tokens: Int) -> [Float] {
    let h = configuration.hidden
    var out = [Float](repeating: 0, count: x.count)
    for t in 0..<tokens {
      var ss: Float = 0
      for i in 0..<h { ss += x[t * h + i] * x[t * h + i] }
      let r = 1 / (ss / Float(h) + configuration.normEpsilon).squareRoot()
      for i in 0..<h { out[t * h + i] = x[t * h + i] * r * weight[i] }
    }
    return out
  }

  /// Rotary embedding on adjacent pairs (2i, 2i+1) of each head, as GGUF's llama layout has it.
  func rope(_ x: inout [Float], heads: Int, tokens: Int, start: Int) {
    let d = configuration.headDim
    for t in 0..<tokens {
      let p = Float(start + t)
      for i in 0..<(d / 2) {
        let theta = p * pow(configuration.ropeBase, -Float(2 * i) / Float(d))
        let (s, c) = (sin(theta), cos(theta))
        for hd in 0..<heads {
          let base = (t * heads + hd) * d + 2 * i
          let a = x[base]
          let b = x[base + 1]
          x[base] = a * c - b * s
          x[base + 1] = a * s + b * c
        }
      }
    }
  }

  /// Cores to split a product over, read once: the count reads the cgroup's files each time,
  /// and asking per product cost 3% of a decode step's CPU.
  static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

  /// `x` `[tokens][in]` times the weights `[out][in]` transposed: `[tokens][out]`, rows split
  /// over the cores, each part reading its rows in their block format.
  static func matmul(_ x: [Float], tokens: Int, in n: Int, weights: WeightMatrix, out: Int)
    -> [Float]
  {
    precondition(weights.cols == n && weights.rows == out)
    var y = [Float](repeating: 0, count: tokens * out)
    let parts = min(out, Self.cores * 4)
    let per = (out + parts - 1) / parts
    let rowBytes = weights.rowBytes
    let type = Int32(weights.type.rawValue)
    x.withUnsafeBufferPointer { xp in
      weights.bytes.withUnsafeBytes { wp in
        y.withUnsafeMutableBufferPointer { yp in
          nonisolated(unsafe) let (xb, wb, yb) = (xp.baseAddress!, wp.baseAddress!, yp.baseAddress!)
          DispatchQueue.concurrentPerform(iterations: parts) { part in
            let r0 = part * per
            let r1 = min(out, r0 + per)
            guard r0 < r1 else { return }
            hkv_matmul_rows_quantized(
              xb, tokens, n, wb + r0 * rowBytes, type, r1 - r0, yb + r0, out)
          }
        }
      }
    }
    return y
  }
}
