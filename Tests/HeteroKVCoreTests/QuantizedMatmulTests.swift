import CHeteroKVKernels
import Testing

@testable import HeteroKVCore

/// The model's products on GGUF block-format weights (Q4_1, Q8_0) against the same weights
/// dequantized and multiplied plainly, on the few-token (block) path and the tiled path, with
/// the vectorized and the portable kernels.
@Suite struct QuantizedMatmulTests {
  /// `rows` rows of `in` weights in `type`'s blocks, with random values and scales.
  func randomBlocks(type: Int32, rows: Int, in n: Int, seed: UInt64) -> [UInt8] {
    var rng = SeededGenerator(seed: seed, stream: [])
    let blockBytes = type == Int32(HKV_WEIGHTS_Q4_1) ? 20 : 34
    var bytes: [UInt8] = []
    for _ in 0..<(rows * n / 32) {
      var scale = Float16(Float(rng.next() % 1000) / 20000 + 0.001).bitPattern
      bytes += withUnsafeBytes(of: &scale) { Array($0) }
      if type == Int32(HKV_WEIGHTS_Q4_1) {
        var offset = Float16(-Float(rng.next() % 1000) / 10000).bitPattern
        bytes += withUnsafeBytes(of: &offset) { Array($0) }
      }
      while bytes.count % blockBytes != 0 { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
    }
    return bytes
  }

  func product(
    _ x: [Float], tokens: Int, in n: Int, weights: [UInt8], type: Int32, rows: Int,
    kernels: UnsafePointer<hkv_kernel_table>? = nil
  ) -> [Float] {
    var y = [Float](repeating: 0, count: tokens * rows)
    weights.withUnsafeBytes { w in
      if let kernels {
        kernels.pointee.matmul_rows_quantized(x, tokens, n, w.baseAddress!, type, rows, &y, rows)
      } else {
        hkv_matmul_rows_quantized(x, tokens, n, w.baseAddress!, type, rows, &y, rows)
      }
    }
    return y
  }

  @Test(arguments: [Int32(HKV_WEIGHTS_Q4_1), Int32(HKV_WEIGHTS_Q8_0)])
  func blockProductsEqualDequantizedOnes(type: Int32) throws {
    let (rows, n) = (7, 96)
    let weights = randomBlocks(type: type, rows: rows, in: n, seed: UInt64(type))
    #expect(weights.count == rows * hkv_weight_row_bytes(type, n))
    var dense = [Float](repeating: 0, count: rows * n)
    weights.withUnsafeBytes { w in
      for r in 0..<rows {
        dense.withUnsafeMutableBufferPointer {
          hkv_dequantize_row(w.baseAddress!, type, n, r, $0.baseAddress! + r * n)
        }
      }
    }
    #expect(dense.contains { $0 != 0 })
    for tokens in [1, 3, 13] {  // block path below 8 tokens, dequantized tiles from 8
      let x = randomFloats(tokens * n, seed: UInt64(tokens))
      var expected = [Float](repeating: 0, count: tokens * rows)
      for t in 0..<tokens {
        for r in 0..<rows {
          var s: Float = 0
          for i in 0..<n { s += x[t * n + i] * dense[r * n + i] }
          expected[t * rows + r] = s
        }
      }
      let vector = product(x, tokens: tokens, in: n, weights: weights, type: type, rows: rows)
      let portable = product(
        x, tokens: tokens, in: n, weights: weights, type: type, rows: rows,
        kernels: hkv_kernels_portable())
      #expect(relativeError(vector, expected) < 1e-5, "tokens \(tokens)")
      #expect(relativeError(portable, expected) < 1e-5, "tokens \(tokens), portable")
    }
    #expect(hkv_weight_row_bytes(type, 33) == 0, "rows must split into 32-weight blocks")
  }
}
