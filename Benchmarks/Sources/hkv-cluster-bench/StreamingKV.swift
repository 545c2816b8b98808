import HeteroKVCore

/// A long context generated chunk by chunk, the same every time: so a 4M-token sequence can
/// be prefilled and then read again for the full-attention reference without ever being held
/// whole. Keys are unit noise, queries noise of 3 per dimension, so scores spread with a
/// standard deviation of about 3 nats and a few percent of the tokens hold most of the mass,
/// as in real long-context heads; at a few planted positions (the first tokens and "needles"
/// spread through the context) keys also carry a large component along a per-head direction
/// the queries share, and one token in 32 carries a weaker share of it (so relevance is
/// graded, and a codebook trained on any stretch of the context has seen that direction).
/// Values are unit noise around a per-head mean.
struct StreamingKV: Sendable {
  let kvHeads: Int
  let groupSize: Int
  let headDim: Int
  let seed: UInt64
  /// One needle every this many tokens.
  let needleEvery = 65_536

  /// The per-head direction needles and queries share.
  func direction(head: Int) -> [Float] {
    var rng = FastRandom(seed: seed ^ 0xD1_4EC7, stream: UInt64(head))
    var v = (0..<headDim).map { _ in rng.uniform() }
    let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
    for i in v.indices { v[i] /= norm }
    return v
  }

  /// K and V of tokens `range` of `head`, `[tokens][d]` fp16 each.
  func rows(head: Int, range: Range<Int>, directions: [[Float]]) -> (
    keys: [Float16], values: [Float16]
  ) {
    let d = headDim
    var keys = [Float16](repeating: 0, count: range.count * d)
    var values = [Float16](repeating: 0, count: range.count * d)
    let dir = directions[head]
    for (i, t) in range.enumerated() {
      var rng = FastRandom(seed: seed, stream: UInt64(t) &* 64 &+ UInt64(head))
      let planted = t < 4 || t % needleEvery == needleEvery / 2
      // One token in 32 is partly about the same thing (a graded share of the direction).
      let related = rng.uniform() > 1.62
      let boost: Float = t < 4 ? 12 : planted ? 12 : related ? 8 + 3 * rng.uniform() : 0
      for c in 0..<d {
        var k = rng.uniform()
        k += boost * dir[c]
        keys[i * d + c] = Float16(k)
        values[i * d + c] = Float16(rng.uniform() + (c % 2 == 0 ? 0.5 : -0.5))
      }
    }
    return (keys, values)
  }

  /// Token-major `[tokens][kvHeads][d]` K and V of `range`, as an engine appends them.
  func interleaved(range: Range<Int>, directions: [[Float]]) -> (keys: [Float16], values: [Float16])
  {
    let d = headDim
    var keys = [Float16](repeating: 0, count: range.count * kvHeads * d)
    var values = keys
    for h in 0..<kvHeads {
      let (k, v) = rows(head: h, range: range, directions: directions)
      for i in 0..<range.count {
        for c in 0..<d {
          keys[(i * kvHeads + h) * d + c] = k[i * d + c]
          values[(i * kvHeads + h) * d + c] = v[i * d + c]
        }
      }
    }
    return (keys, values)
  }

  /// The query group of decode step `step`, `[kvHeads * groupSize][d]`: noise plus the head's
  /// needle direction.
  func queries(step: Int, directions: [[Float]]) -> [Float] {
    let d = headDim
    var out = [Float](repeating: 0, count: kvHeads * groupSize * d)
    for h in 0..<kvHeads {
      for a in 0..<groupSize {
        var rng = FastRandom(seed: seed ^ 0x9E37, stream: UInt64(step * 4096 + h * 64 + a))
        for c in 0..<d {
          out[((h * groupSize) + a) * d + c] = 3 * rng.uniform() + 17 * directions[h][c]
        }
      }
    }
    return out
  }
}

/// xorshift64* seeded per (seed, stream): fast, and any token's rows can be made alone.
struct FastRandom {
  var state: UInt64

  init(seed: UInt64, stream: UInt64) {
    var z = seed &+ stream &* 0x9E37_79B9_7F4A_7C15 &+ 0x632B_E59B_D9B4_E019
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    state = (z ^ (z >> 31)) | 1
  }

  /// Uniform in [-1.7, 1.7] (unit variance).
  mutating func uniform() -> Float {
    state ^= state >> 12
    state ^= state << 25
    state ^= state >> 27
    let bits = (state &* 0x2545_F491_4F6C_DD1D) >> 40
    return (Float(bits) / Float(1 << 24) * 2 - 1) * 1.732
  }
}
