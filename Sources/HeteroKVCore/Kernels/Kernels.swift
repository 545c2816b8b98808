import CHeteroKVKernels

/// Swift entry points to the vectorised kernels (AVX2/FMA/F16C where the CPU has them,
/// portable C otherwise). Callers validate shapes; these only compute.
public enum Kernels {
  /// Whether the AVX2 + FMA + F16C kernels are in use on this CPU.
  public static var isVectorized: Bool { hkv_kernels_vectorized() != 0 }

  /// Σ values: a plain streaming read, the memory bandwidth reference for benchmarks.
  public static func scanSum(_ values: [Float]) -> Double {
    hkv_scan_sum_f32(values, values.count)
  }

  /// fp32 to fp16, round to nearest even.
  public static func toHalf(_ values: [Float]) -> [Float16] {
    [Float16](unsafeUninitializedCapacity: values.count) { out, count in
      values.withUnsafeBufferPointer { src in
        out.withMemoryRebound(to: UInt16.self) { dst in
          hkv_f32_to_f16(src.baseAddress!, dst.baseAddress!, values.count)
        }
      }
      count = values.count
    }
  }

  /// fp16 to fp32.
  public static func toFloat(_ values: UnsafeBufferPointer<Float16>) -> [Float] {
    guard !values.isEmpty else { return [] }
    return [Float](unsafeUninitializedCapacity: values.count) { out, count in
      values.withMemoryRebound(to: UInt16.self) { src in
        hkv_f16_to_f32(src.baseAddress!, out.baseAddress!, values.count)
      }
      count = values.count
    }
  }

  /// `scale * q[h]·keys[j]` for every query head `h` (rows of `queries`) and key row `j`,
  /// head-major: result[h * keys.rows + j].
  public static func scores(queries: [Float], heads: Int, keys: HalfMatrix, scale: Float)
    -> [Float]
  {
    let n = keys.rows
    return [Float](unsafeUninitializedCapacity: heads * n) { out, count in
      queries.withUnsafeBufferPointer { q in
        keys.storage.withUnsafeBufferPointer { k in
          k.withMemoryRebound(to: UInt16.self) { k16 in
            hkv_scores_f16(
              q.baseAddress!, heads, k16.baseAddress!, n, keys.cols, scale,
              out.baseAddress!)
          }
        }
      }
      count = heads * n
    }
  }

  /// out[h] = Σ_j probs[h * values.rows + j] · values[j], for every head (dense).
  public static func weightedSum(values: HalfMatrix, probabilities: [Float], heads: Int)
    -> [Float]
  {
    var out = [Float](repeating: 0, count: heads * values.cols)
    values.storage.withUnsafeBufferPointer { v in
      v.withMemoryRebound(to: UInt16.self) { v16 in
        probabilities.withUnsafeBufferPointer { p in
          hkv_weighted_sum_dense_f16(
            v16.baseAddress!, values.rows, values.cols, p.baseAddress!,
            heads, &out)
        }
      }
    }
    return out
  }

  /// For every head h: Σ_k weights[h * indices.count + k] · values[indices[k]]; each chosen
  /// row is read once for all heads.
  public static func weightedSum(
    values: HalfMatrix, indices: [Int32], weights: [Float], heads: Int
  ) -> [Float] {
    var out = [Float](repeating: 0, count: heads * values.cols)
    values.storage.withUnsafeBufferPointer { v in
      v.withMemoryRebound(to: UInt16.self) { v16 in
        hkv_weighted_sum_sparse_multi_f16(
          v16.baseAddress!, values.cols, indices, weights, indices.count, heads, &out)
      }
    }
    return out
  }

}
