import CHeteroKVKernels
import Foundation
import Testing

@testable import HeteroKVCore

/// The vectorized kernels must agree with the portable ones (CI machines without AVX2 run
/// only the portable set). Each check calls both kernel tables directly, per call, so no
/// other suite running at the same time can change which set a check measures.
@Suite struct KernelParityTests {
  let portable = hkv_kernels_portable().pointee

  /// The AVX2 set; this suite is only meaningful where the CPU has it, which it requires.
  func vectorized() throws -> hkv_kernel_table {
    try #require(hkv_kernels_avx2(), "this CPU has no AVX2 + FMA + F16C kernels to compare").pointee
  }

  func halves(_ count: Int, seed: UInt64, scale: Float = 1) -> [UInt16] {
    Kernels.toHalf(randomFloats(count, seed: seed, scale: scale)).map(\.bitPattern)
  }

  /// `body` run with each table, its outputs side by side.
  func both<T>(_ body: (hkv_kernel_table) -> T) throws -> (portable: T, vector: T) {
    (body(portable), body(try vectorized()))
  }

  @Test func conversionsAndFP16Kernels() throws {
    let (d, n, heads) = (128, 203, 4)
    let source = randomFloats(1001, seed: 4, scale: 100)
    let toHalf = try both { t in
      var out = [UInt16](repeating: 0, count: source.count)
      t.f32_to_f16(source, &out, source.count)
      return out
    }
    #expect(toHalf.portable == toHalf.vector)
    let toFloat = try both { t in
      var out = [Float](repeating: 0, count: source.count)
      t.f16_to_f32(toHalf.portable, &out, source.count)
      return out
    }
    #expect(toFloat.portable == toFloat.vector)

    let keys = halves(n * d, seed: 1)
    let values = halves(n * d, seed: 2)
    let q = randomFloats(heads * d, seed: 3)
    let scores = try both { t in
      var out = [Float](repeating: 0, count: heads * n)
      t.scores_f16(q, heads, keys, n, d, 0.3, &out)
      return out
    }
    #expect(relativeError(scores.portable, scores.vector) < 1e-5)
    // Against a plain dot product too, so that both cannot be wrong together.
    let reference = try HalfMatrix(halves: keys.map(Float16.init(bitPattern:)), cols: d)
    for j in [0, 101, n - 1] {
      let expected = 0.3 * dot(Array(q[0..<d]), reference.row(j))
      #expect(abs(scores.portable[j] - expected) < 1e-3 * max(1, abs(expected)))
    }

    let probabilities = randomFloats(heads * n, seed: 5).map { abs($0) }
    let dense = try both { t in
      var out = [Float](repeating: 0, count: heads * d)
      t.weighted_sum_dense_f16(values, n, d, probabilities, heads, &out)
      return out
    }
    #expect(relativeError(dense.portable, dense.vector) < 1e-5)

    let indices: [Int32] = [0, 3, 4, 17, 90, 91, 92, 150, 202]
    let weights = randomFloats(heads * indices.count, seed: 6).map { abs($0) }
    let sparse = try both { t in
      var out = [Float](repeating: 0, count: heads * d)
      t.weighted_sum_sparse_multi_f16(values, d, indices, weights, indices.count, heads, &out)
      return out
    }
    #expect(relativeError(sparse.portable, sparse.vector) < 1e-5)

    // Rows in place, through pointers, in any order (a repeat too; 11 rows: the four-row
    // blocks and a tail; 3 heads: not the x4 path): the same as the dense kernels' rows.
    let order = [5, 0, 3, 200, 17, 17, 90, 1, 150, 202, 64]
    func pointed<T>(_ rows: [UInt16], _ body: ([UnsafePointer<UInt16>?]) -> T) -> T {
      rows.withUnsafeBufferPointer { base in body(order.map { base.baseAddress! + $0 * d }) }
    }
    let three = 3
    let rowScores = try both { t in
      pointed(keys) { rows in
        var out = [Float](repeating: 0, count: three * order.count)
        t.scores_f16_rows(q, three, rows, order.count, d, 0.3, &out)
        return out
      }
    }
    #expect(relativeError(rowScores.portable, rowScores.vector) < 1e-5)
    for h in 0..<three {
      for (j, row) in order.enumerated() {
        let expected = scores.portable[h * n + row]
        #expect(
          abs(rowScores.vector[h * order.count + j] - expected) < 1e-4 * max(1, abs(expected)))
      }
    }
    let rowWeights = randomFloats(three * order.count, seed: 8).map { abs($0) }
    let rowSums = try both { t in
      pointed(values) { rows in
        var out = [Float](repeating: 0, count: three * d)
        t.weighted_sum_rows_f16(rows, order.count, d, rowWeights, three, &out)
        return out
      }
    }
    #expect(relativeError(rowSums.portable, rowSums.vector) < 1e-5)
    // The sparse kernel over the same indices and weights computes the same sums.
    var sparseSums = [Float](repeating: 0, count: three * d)
    portable.weighted_sum_sparse_multi_f16(
      values, d, order.map(Int32.init), rowWeights, order.count, three, &sparseSums)
    #expect(relativeError(rowSums.portable, sparseSums) < 1e-6)

    let logits = randomFloats(n, seed: 7, scale: 4)
    let softmax = try both { t in
      var x = logits
      var m: Float = 0
      let sum = t.softmax_exp(&x, n, &m)
      return (x, m, sum)
    }
    #expect(softmax.portable.1 == softmax.vector.1)
    #expect(relativeError(softmax.portable.0, softmax.vector.0) < 1e-5)
    #expect(abs(softmax.portable.2 - softmax.vector.2) < 1e-4 * softmax.portable.2)

    let scan = randomFloats(4099, seed: 8)
    let sums = try both { t in t.scan_sum_f32(scan, scan.count) }
    #expect(abs(sums.portable - sums.vector) < 1e-3)
  }

  @Test(
    "fp16 scores and weighted sums at every head count and width: the two-row score blocks, the line-wide sums and their tails"
  )
  func fp16KernelsByHeadCount() throws {
    // Odd row counts leave a one-row tail after the two-row blocks; d = 40 is a multiple of 8
    // but not of 32 (no line-wide sums); 5 to 8 heads take a second block of heads.
    for d in [32, 40, 64, 128] {
      for heads in 1...8 {
        let n = 13 + heads % 2
        let keys = halves(40 * d, seed: UInt64(d * 10 + heads))
        let values = halves(40 * d, seed: UInt64(d * 10 + heads + 1))
        let q = randomFloats(heads * d, seed: UInt64(heads))
        let order = (0..<n).map { ($0 * 7 + heads) % 40 }
        let dense = try both { t in
          var out = [Float](repeating: 0, count: heads * n)
          t.scores_f16(q, heads, keys, n, d, 0.25, &out)
          return out
        }
        #expect(
          relativeError(dense.portable, dense.vector) < 1e-5, "dense scores d \(d) heads \(heads)")
        let probabilities = randomFloats(heads * n, seed: 9).map { abs($0) }
        let (scores, sums) = try keys.withUnsafeBufferPointer { k in
          try values.withUnsafeBufferPointer { v in
            let keyRows = order.map { Optional(k.baseAddress! + $0 * d) }
            let valueRows = order.map { Optional(v.baseAddress! + $0 * d) }
            let scores = try both { t in
              var out = [Float](repeating: 0, count: heads * n)
              t.scores_f16_rows(q, heads, keyRows, n, d, 0.25, &out)
              return out
            }
            let sums = try both { t in
              var out = [Float](repeating: 1, count: heads * d)  // the kernels add to it
              t.weighted_sum_rows_f16(valueRows, n, d, probabilities, heads, &out)
              return out
            }
            return (scores, sums)
          }
        }
        #expect(
          relativeError(scores.portable, scores.vector) < 1e-5, "row scores d \(d) heads \(heads)")
        #expect(relativeError(sums.portable, sums.vector) < 1e-5, "row sums d \(d) heads \(heads)")
        // Each row's scores are its own key's: the dense kernel over the rows in order.
        for h in 0..<heads {
          for (j, row) in order.enumerated() where row < n {
            let expected = dense.portable[h * n + row]
            let got = scores.vector[h * n + j]
            #expect(abs(got - expected) < 1e-4 * max(1, abs(expected)))
          }
        }
      }
    }
  }

  @Test(
    "selection kernels: chunked numerators, a group's summed probabilities and buckets, the kept set packed in place"
  )
  func selectionKernels() throws {
    let chunk = Int(HKV_SELECT_CHUNK)
    // Lengths off the vector width and the chunk, and scores whose maximum rises late (chunk
    // maxima then differ from the final one).
    for (n, seed) in [(3 * chunk + 13, UInt64(41)), (7, 42), (chunk, 43)] {
      let heads = 3
      var scores = randomFloats(heads * n, seed: seed, scale: 6)
      scores[n - 1] += 30
      let chunks = (n + chunk - 1) / chunk
      let numerators = try both { t in
        var w = [Float](repeating: -1, count: heads * n)
        var chunkMax = [Float](repeating: 0, count: heads * chunks)
        var maxima = [Float](repeating: 0, count: heads)
        var totals = [Float](repeating: 0, count: heads)
        for h in 0..<heads {
          scores.withUnsafeBufferPointer { s in
            w.withUnsafeMutableBufferPointer { wp in
              chunkMax.withUnsafeMutableBufferPointer { cp in
                totals[h] = t.softmax_exp_chunked(
                  s.baseAddress! + h * n, n, wp.baseAddress! + h * n, cp.baseAddress! + h * chunks,
                  &maxima[h])
              }
            }
          }
        }
        return (w, chunkMax, maxima, totals)
      }
      #expect(numerators.portable.1 == numerators.vector.1)
      #expect(numerators.portable.2 == numerators.vector.2)
      #expect(relativeError(numerators.portable.0, numerators.vector.0) < 1e-6)
      // Against the definition: w[j] = exp(x[j] - running maximum of its chunk); the sum over
      // the final maximum.
      let (w, chunkMax, maxima, totals) = numerators.portable
      var coef = [Float](repeating: 0, count: heads * chunks)
      for h in 0..<heads {
        let row = scores[h * n..<(h + 1) * n]
        #expect(maxima[h] == row.max()!)
        let z = row.reduce(0.0) { $0 + exp(Double($1 - maxima[h])) }
        #expect(abs(Double(totals[h]) - z) < 1e-5 * z)
        #expect(abs(Double(numerators.vector.3[h]) - z) < 1e-5 * z)
        for c in 0..<chunks {
          let running = row.prefix((c + 1) * chunk).max()!
          #expect(chunkMax[h * chunks + c] == running)
          coef[h * chunks + c] = exp(running - maxima[h]) / totals[h]
        }
        for j in [0, n / 2, n - 1] {
          let expected = exp(scores[h * n + j] - chunkMax[h * chunks + j / chunk])
          #expect(abs(w[h * n + j] - expected) <= 1e-6 * max(expected, 1e-30))
        }
      }
      // Same numerators in: the same sums and buckets bit for bit.
      let top: Int32 = 1000
      let grouped = try both { t in
        var sums = [Float](repeating: 0, count: n)
        var buckets = [UInt16](repeating: 0, count: n)
        let used = t.group_mean_buckets(w, heads, n, coef, top, &sums, &buckets)
        return (sums, buckets, used)
      }
      #expect(grouped.portable.0 == grouped.vector.0)
      #expect(grouped.portable.1 == grouped.vector.1)
      #expect(grouped.portable.2 == grouped.vector.2)
      let (sums, buckets, used) = grouped.portable
      #expect(used == buckets.max()!)
      for j in [0, n / 3, n - 1] {
        let expected = (0..<heads).reduce(Float(0)) {
          $0 + w[$1 * n + j] * coef[$1 * chunks + j / chunk]
        }
        #expect(abs(sums[j] - expected) <= 1e-6 * expected)
        let gap = Int(top) - Int(sums[j].bitPattern >> 17)
        #expect(Int(buckets[j]) == min(max(gap, 0), 4095))
      }
      // The kept set: below the boundary or marked taken, with weights packed in place.
      var marked = buckets
      let boundary = buckets.sorted()[n / 2]
      for j in stride(from: 1, to: n, by: 5) where marked[j] == boundary {
        marked[j] = UInt16(HKV_TAU_TAKEN)
      }
      let expectedKept = (0..<n).filter {
        marked[$0] < boundary || marked[$0] == UInt16(HKV_TAU_TAKEN)
      }
      let packed = try both { t in
        var rows = w
        var indices = [Int32](repeating: -1, count: n)
        var mass = [Float](repeating: 0, count: heads)
        let kept = t.keep_compress(marked, n, boundary, &rows, heads, coef, &indices, &mass)
        return (Array(indices.prefix(kept)), rows, mass, kept)
      }
      #expect(packed.portable.0 == expectedKept.map(Int32.init))
      #expect(packed.vector.0 == packed.portable.0)
      for h in 0..<heads {
        let expectedWeights = expectedKept.map { w[h * n + $0] * coef[h * chunks + $0 / chunk] }
        #expect(Array(packed.portable.1[h * n..<h * n + expectedKept.count]) == expectedWeights)
        #expect(Array(packed.vector.1[h * n..<h * n + expectedKept.count]) == expectedWeights)
        let mass = expectedWeights.reduce(0, +)
        #expect(abs(packed.portable.2[h] - mass) < 1e-5 && abs(packed.vector.2[h] - mass) < 1e-5)
      }
    }
    // A NaN anywhere or +inf makes the sum NaN (the selection then refuses the scores).
    for bad in [Float.nan, .infinity] {
      var x = randomFloats(2 * chunk + 9, seed: 44)
      x[chunk + 3] = bad
      let sums = try both { t in
        var w = [Float](repeating: 0, count: x.count)
        var chunkMax = [Float](repeating: 0, count: 3)
        var m: Float = 0
        return t.softmax_exp_chunked(x, x.count, &w, &chunkMax, &m)
      }
      #expect(sums.portable.isNaN && sums.vector.isNaN, "\(bad)")
    }
  }

  /// Each point's nearest of `c` centroids (structure of arrays `[s][c]`) on both tables.
  func nearestOnBoth(_ points: [Float], n: Int, s: Int, centroids: [Float], c: Int) throws
    -> (portable: [UInt16], vector: [UInt16])
  {
    let norms = (0..<c).map { m in
      (0..<s).reduce(Float(0)) { $0 + centroids[$1 * c + m] * centroids[$1 * c + m] }
    }
    return try both { t in
      var out = [UInt16](repeating: 0, count: n)
      t.nearest_centroids(points, n, s, s, centroids, norms, c, &out, 1)
      return out
    }
  }

  @Test func productQuantizationKernels() throws {
    let (g, c, s, n, heads) = (32, 64, 4, 203, 4)
    let centroids = halves(g * c * s, seed: 11)
    let q = randomFloats(heads * g * s, seed: 12)
    let lut = try both { t in
      var out = [Float](repeating: 0, count: g * c * 4)
      t.pq_lut_x4(centroids, g, c, s, q, heads, &out)
      return out
    }
    #expect(relativeError(lut.portable, lut.vector) < 1e-5)

    var rng = SeededGenerator(seed: 13)
    let codes16 = (0..<(n * g)).map { _ in UInt16(rng.next() % UInt64(c)) }
    let codes8 = codes16.map { UInt8($0) }
    let wide = try both { t in
      var out = [Float](repeating: 0, count: 4 * n)
      t.pq_scores_x4(lut.portable, g, c, codes16, n, &out)
      return out
    }
    #expect(relativeError(wide.portable, wide.vector) < 1e-5)
    let narrow = try both { t in
      var out = [Float](repeating: 0, count: 4 * n)
      t.pq_scores_x4_u8(lut.portable, g, c, codes8, n, &out)
      return out
    }
    #expect(relativeError(narrow.portable, narrow.vector) < 1e-5)
    #expect(relativeError(narrow.portable, wide.portable) < 1e-6)

    // Nearest centroids of one sub-space: the same code for every point.
    let points = randomFloats(n * s, seed: 14)
    let soa = randomFloats(s * c, seed: 15)
    let nearest = try nearestOnBoth(points, n: n, s: s, centroids: soa, c: c)
    #expect(nearest.portable == nearest.vector)

    // 16 centroids, each one twice (m and m + 8 equal): both tables pick the lower index.
    let small = 16
    let half = randomFloats(s * small / 2, seed: 16)
    let twice = (0..<s).flatMap { t in
      (0..<small).map { m in half[t * small / 2 + m % (small / 2)] }
    }
    let ties = try nearestOnBoth(points, n: n, s: s, centroids: twice, c: small)
    #expect(ties.portable == ties.vector)
    #expect(ties.vector.allSatisfy { $0 < small / 2 })
  }

  @Test(
    "a decode step's few keys over two-dim fp16 pairs get the codes of the prefill's table path, ties to the lower index"
  )
  func nearestOverHalfPairs() throws {
    // 256 pairs, the second 128 repeating the first: every point has a tie.
    let c = 256
    let firstHalf = halves(c, seed: 21)
    let pairs = firstHalf + firstHalf
    let n = 40
    let points = randomFloats(n * 2, seed: 22)
    // 40 points go through the table (n >= 16); one at a time through the direct kernel.
    var bulk = [UInt16](repeating: 0, count: n)
    #expect(hkv_nearest_centroids_f16(points, n, 2, 2, pairs, c, &bulk, 1) == 0)
    for j in 0..<n {
      var alone: UInt16 = 0
      let point = Array(points[(2 * j)..<(2 * j + 2)])
      #expect(hkv_nearest_centroids_f16(point, 1, 2, 2, pairs, c, &alone, 1) == 0)
      #expect(alone == bulk[j], "point \(j)")
      #expect(alone < c / 2, "point \(j): a tie went to the higher index")
    }
  }

  @Test(
    "fast-scan 4-bit scores agree bit for bit on both tables and with the byte table summed by hand",
    arguments: [(32, 2, 203, 4), (33, 2, 64, 3), (64, 1, 31, 9), (1, 64, 70, 1)])
  func fastScanProductQuantization(g: Int, s: Int, n: Int, heads: Int) throws {
    let c = 16
    let centroids = halves(g * c * s, seed: 31)
    let q = randomFloats(heads * g * s, seed: 32)
    let sub = hkv_pq4_subspaces(g)
    var lut = [UInt8](repeating: 0, count: heads * sub * 16)
    var step = [Float](repeating: 0, count: heads)
    var bias = [Float](repeating: 0, count: heads)
    hkv_pq4_lut(centroids, g, c, s, q, heads, &lut, &step, &bias)
    var rng = SeededGenerator(seed: 33)
    let codes = (0..<(n * g)).map { _ in Int(rng.next() % 16) }
    var blocks = [UInt8](repeating: 0, count: (n + 31) / 32 * hkv_pq4_block_bytes(g))
    hkv_pq4_pack(codes.map(UInt16.init), n, g, 0, &blocks)
    // The layout by hand: token 33's code of sub-space 1 is the high nibble of block 1, pair 0,
    // byte 2 * 1 (the second of the block's first 16 tokens).
    if n > 33, g > 1 {
      #expect(Int(blocks[hkv_pq4_block_bytes(g) + 2] >> 4) == codes[33 * g + 1])
    }
    let stride = n + 5
    let scores = try both { t in
      var out = [Float](repeating: -1, count: heads * stride)
      t.pq4_scores(lut, step, bias, heads, g, blocks, n, &out, stride)
      return out
    }
    #expect(scores.portable == scores.vector)
    for h in 0..<heads {
      // Nothing past n is written.
      #expect(scores.vector[h * stride + n..<h * stride + stride].allSatisfy { $0 == -1 })
      for j in 0..<n {
        // The byte table summed by hand, and the float score it stands for: each entry errs
        // by at most half a step.
        let sum = (0..<g).reduce(0) { $0 + Int(lut[(h * sub + $1) * 16 + codes[j * g + $1]]) }
        let fromTable = bias[h] + step[h] * Float(sum)
        #expect(abs(scores.vector[h * stride + j] - fromTable) <= 1e-5 * max(1, abs(fromTable)))
        var exact: Float = 0
        for i in 0..<g {
          for k in 0..<s {
            exact +=
              q[h * g * s + i * s + k]
              * Float(Float16(bitPattern: centroids[(i * c + codes[j * g + i]) * s + k]))
          }
        }
        #expect(
          abs(scores.vector[h * stride + j] - exact) <= step[h] / 2 * Float(g) * 1.001 + 1e-4,
          "h \(h) j \(j)")
      }
    }
  }

  /// One-byte codes over `g` sub-spaces of `s` dims and `c` centroids, in blocks, with their byte
  /// table for `heads` query heads built by `table`.
  func byteTableCase(
    g: Int, s: Int, c: Int, n: Int, heads: Int, table: hkv_kernel_table
  ) -> (
    centroids: [UInt16], q: [Float], codes: [Int], blocks: [UInt8], lut: [UInt8],
    step: [Float], bias: [Float]
  ) {
    let centroids = halves(g * c * s, seed: 41)
    let q = randomFloats(heads * g * s, seed: 42)
    var lut = [UInt8](repeating: 7, count: heads * g * 256)
    var step = [Float](repeating: 0, count: heads)
    var bias = [Float](repeating: 0, count: heads)
    var scratch = [Float](repeating: 0, count: 4 * g * 256)
    table.pq8_lut(centroids, g, c, s, q, heads, &scratch, &lut, &step, &bias)
    var rng = SeededGenerator(seed: 43)
    let codes = (0..<(n * g)).map { _ in Int(rng.next() % UInt64(c)) }
    var blocks = [UInt8](repeating: 0, count: (n + 63) / 64 * hkv_pq8_block_bytes(g))
    hkv_pq8_pack(codes.map(UInt16.init), n, g, 0, &blocks)
    return (centroids, q, codes, blocks, lut, step, bias)
  }

  @Test(
    "one-byte codes from a byte table: the layout, the table and the scores by hand, within half a step per sub-space of the float scores",
    arguments: [(32, 2, 256, 203, 3), (16, 4, 256, 64, 4), (8, 8, 200, 70, 5), (1, 64, 256, 65, 1)])
  func byteTableProductQuantization(g: Int, s: Int, c: Int, n: Int, heads: Int) throws {
    let k = byteTableCase(g: g, s: s, c: c, n: n, heads: heads, table: portable)
    // Token 33's code of sub-space 1: block 0, row 1, byte 2 * 1 + 1 (the second of the
    // block's second 32 tokens); token 64's of sub-space 0 opens block 1.
    if n > 64, g > 1 {
      #expect(Int(k.blocks[64 + 3]) == k.codes[33 * g + 1])
      #expect(Int(k.blocks[hkv_pq8_block_bytes(g)]) == k.codes[64 * g])
    }
    let stride = n + 3
    var out = [Float](repeating: -1, count: heads * stride)
    portable.pq8_scores(k.lut, k.step, k.bias, heads, g, k.blocks, n, &out, stride)
    for h in 0..<heads {
      #expect(out[h * stride + n..<h * stride + stride].allSatisfy { $0 == -1 })
      // Entries past c are 0, and each sub-space's lowest entry is 0.
      for i in 0..<g {
        let row = k.lut[(h * g + i) * 256..<(h * g + i + 1) * 256]
        #expect(row.dropFirst(c).allSatisfy { $0 == 0 })
        #expect(row.prefix(c).min() == 0)
      }
      for j in 0..<n {
        let sum = (0..<g).reduce(0) { $0 + Int(k.lut[(h * g + $1) * 256 + k.codes[j * g + $1]]) }
        #expect(out[h * stride + j] == fmaf(k.step[h], Float(sum), k.bias[h]))
        var exact: Float = 0
        for i in 0..<g {
          for t in 0..<s {
            exact +=
              k.q[h * g * s + i * s + t]
              * Float(Float16(bitPattern: k.centroids[(i * c + k.codes[j * g + i]) * s + t]))
          }
        }
        #expect(
          abs(out[h * stride + j] - exact) <= k.step[h] / 2 * Float(g) * 1.001 + 1e-4,
          "h \(h) j \(j)")
      }
    }
  }

  @Test(
    "the AVX-512 table builds the same byte tables and scores one-byte codes bit for bit as the portable one",
    .enabled(if: hkv_kernels_avx512() != nil, "needs AVX-512 F, BW and VBMI"),
    arguments: [
      (32, 2, 256, 203, 3), (16, 4, 256, 64, 4), (32, 4, 256, 1000, 8), (8, 8, 256, 70, 5),
      (16, 2, 200, 130, 2), (1, 64, 256, 65, 1),
    ])
  func byteTableScoresOnAVX512(g: Int, s: Int, c: Int, n: Int, heads: Int) throws {
    let avx512 = try #require(hkv_kernels_avx512()).pointee
    func address<F>(_ f: F) -> UnsafeRawPointer { unsafeBitCast(f, to: UnsafeRawPointer.self) }
    #expect(address(avx512.pq8_scores) != address(portable.pq8_scores))
    #expect(address(avx512.pq8_lut) != address(portable.pq8_lut))
    let p = byteTableCase(g: g, s: s, c: c, n: n, heads: heads, table: portable)
    let v = byteTableCase(g: g, s: s, c: c, n: n, heads: heads, table: avx512)
    #expect(p.lut == v.lut && p.step == v.step && p.bias == v.bias)
    let stride = n + 3
    var fromPortable = [Float](repeating: -1, count: heads * stride)
    var fromAVX512 = fromPortable
    portable.pq8_scores(p.lut, p.step, p.bias, heads, g, p.blocks, n, &fromPortable, stride)
    avx512.pq8_scores(p.lut, p.step, p.bias, heads, g, p.blocks, n, &fromAVX512, stride)
    #expect(fromPortable == fromAVX512)
    #expect(fromAVX512.contains { $0 != -1 })
  }

  @Test(arguments: [2, 4, 8])
  func scalarQuantizedScores(bits: Int) throws {
    let (d, heads, groupSize, groups) = (128, 4, 32, 3)
    var rng = SeededGenerator(seed: UInt64(20 + bits))
    let codes = (0..<(groups * groupSize * d * bits / 8)).map { _ in
      UInt8(truncatingIfNeeded: rng.next())
    }
    let scales = Kernels.toHalf(randomFloats(groups * d, seed: 21).map { abs($0) / 8 + 0.01 })
      .map(\.bitPattern)
    let zeros = halves(groups * d, seed: 22)
    let q = randomFloats(heads * d, seed: 23)
    let n = groups * groupSize
    let scores = try both { t in
      var out = [Float](repeating: 0, count: heads * n)
      t.sq_group_scores(q, heads, codes, scales, zeros, groups, groupSize, d, bits, 0.5, &out, n)
      return out
    }
    // 4 bits use an int16 query on the vector path: 1 part in 32767 of the largest channel.
    #expect(relativeError(scores.portable, scores.vector) < 1e-4, "bits \(bits)")
    #expect(scores.portable.contains { $0 != 0 })
  }

  @Test(
    "the two tables hold different code for every kernel, so no check compares a set with itself")
  func tablesAreDistinct() throws {
    let v = try vectorized()
    func address<F>(_ f: F) -> UnsafeRawPointer { unsafeBitCast(f, to: UnsafeRawPointer.self) }
    let pairs: [(String, UnsafeRawPointer, UnsafeRawPointer)] = [
      ("f16_to_f32", address(portable.f16_to_f32), address(v.f16_to_f32)),
      ("f32_to_f16", address(portable.f32_to_f16), address(v.f32_to_f16)),
      ("scores_f16", address(portable.scores_f16), address(v.scores_f16)),
      ("dense", address(portable.weighted_sum_dense_f16), address(v.weighted_sum_dense_f16)),
      (
        "sparse", address(portable.weighted_sum_sparse_multi_f16),
        address(v.weighted_sum_sparse_multi_f16)
      ),
      ("scores_f16_rows", address(portable.scores_f16_rows), address(v.scores_f16_rows)),
      (
        "weighted_sum_rows", address(portable.weighted_sum_rows_f16),
        address(v.weighted_sum_rows_f16)
      ),
      ("pq_scores_x4", address(portable.pq_scores_x4), address(v.pq_scores_x4)),
      ("pq_scores_x4_u8", address(portable.pq_scores_x4_u8), address(v.pq_scores_x4_u8)),
      ("pq_lut_x4", address(portable.pq_lut_x4), address(v.pq_lut_x4)),
      ("pq4_scores", address(portable.pq4_scores), address(v.pq4_scores)),
      ("sq4_scores", address(portable.sq4_scores), address(v.sq4_scores)),
      ("sq_group_scores", address(portable.sq_group_scores), address(v.sq_group_scores)),
      ("nearest_centroids", address(portable.nearest_centroids), address(v.nearest_centroids)),
      ("softmax_exp", address(portable.softmax_exp), address(v.softmax_exp)),
      (
        "softmax_exp_chunked", address(portable.softmax_exp_chunked),
        address(v.softmax_exp_chunked)
      ),
      (
        "group_mean_buckets", address(portable.group_mean_buckets),
        address(v.group_mean_buckets)
      ),
      ("keep_compress", address(portable.keep_compress), address(v.keep_compress)),
      ("scan_sum_f32", address(portable.scan_sum_f32), address(v.scan_sum_f32)),
      ("crc32c", address(portable.crc32c), address(v.crc32c)),
      ("matmul_rows_f32", address(portable.matmul_rows_f32), address(v.matmul_rows_f32)),
      (
        "matmul_rows_quantized", address(portable.matmul_rows_quantized),
        address(v.matmul_rows_quantized)
      ),
    ]
    for (name, p, vec) in pairs { #expect(p != vec, "\(name)") }
    #expect(portable.vectorized == 0 && v.vectorized == 1)
  }

  /// The best set the CPU has, within the cap HKV_KERNELS sets for this process.
  @Test func theActiveTableIsTheBestTheCPUHas() {
    let cap = ProcessInfo.processInfo.environment["HKV_KERNELS"]
    let active = hkv_kernels_vectorized() != 0
    #expect(active == (hkv_kernels_avx2() != nil && cap != "portable"))
    #expect(
      (hkv_pq8_lookups_in_registers() != 0)
        == (hkv_kernels_avx512() != nil && cap != "portable" && cap != "avx2"))
    #expect(Kernels.isVectorized == active)
  }
}
