// Dense f32 matrix products for the model's forward pass: y[t][r] = sum_i x[t][i] * w[r][i],
// the weight matrix row-major [rows][in] as GGUF stores a linear layer (ne0 = in). Callers
// split the rows across cores; each call runs every token against its rows so a weight row is
// read from memory once per call and reused from cache for every token.

#include "hkv_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define HKV_X86 1
#include <immintrin.h>
#define HKV_AVX2 __attribute__((target("avx2,fma")))
#endif

static void matmul_rows_portable(const float *x, size_t tokens, size_t in, const float *w,
                                 size_t rows, float *y, size_t y_stride) {
  for (size_t r = 0; r < rows; r++) {
    const float *wr = w + r * in;
    for (size_t t = 0; t < tokens; t++) {
      const float *xt = x + t * in;
      float s = 0;
      for (size_t i = 0; i < in; i++) s += xt[i] * wr[i];
      y[t * y_stride + r] = s;
    }
  }
}

#ifdef HKV_X86
HKV_AVX2 static inline float hsum8(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// Four tokens against one row at a time: the row's vector is loaded once for four dots.
HKV_AVX2 static void matmul_block_avx2(const float *x, size_t tokens, size_t in, const float *w,
                                       size_t rows, float *y, size_t y_stride) {
  size_t body = in & ~(size_t)7;
  for (size_t r = 0; r < rows; r++) {
    const float *wr = w + r * in;
    size_t t = 0;
    for (; t + 4 <= tokens; t += 4) {
      const float *x0 = x + t * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = 0; i < body; i += 8) {
        __m256 wv = _mm256_loadu_ps(wr + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), wv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i), wv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + i), wv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + i), wv, a3);
      }
      float s0 = hsum8(a0), s1 = hsum8(a1), s2 = hsum8(a2), s3 = hsum8(a3);
      for (size_t i = body; i < in; i++) {
        s0 += x0[i] * wr[i];
        s1 += x1[i] * wr[i];
        s2 += x2[i] * wr[i];
        s3 += x3[i] * wr[i];
      }
      y[t * y_stride + r] = s0;
      y[(t + 1) * y_stride + r] = s1;
      y[(t + 2) * y_stride + r] = s2;
      y[(t + 3) * y_stride + r] = s3;
    }
    for (; t < tokens; t++) {
      const float *xt = x + t * in;
      __m256 a = _mm256_setzero_ps();
      for (size_t i = 0; i < body; i += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(xt + i), _mm256_loadu_ps(wr + i), a);
      float s = hsum8(a);
      for (size_t i = body; i < in; i++) s += xt[i] * wr[i];
      y[t * y_stride + r] = s;
    }
  }
}

// Tiles of 64 rows x 64 tokens, so both stay in cache while every pair is computed (without
// tiling, each weight row streamed every token from memory and the product was memory-bound).
HKV_AVX2 static void matmul_rows_avx2(const float *x, size_t tokens, size_t in, const float *w,
                                      size_t rows, float *y, size_t y_stride) {
  const size_t tile = 64;
  for (size_t r0 = 0; r0 < rows; r0 += tile) {
    size_t nr = rows - r0 < tile ? rows - r0 : tile;
    for (size_t t0 = 0; t0 < tokens; t0 += tile) {
      size_t nt = tokens - t0 < tile ? tokens - t0 : tile;
      matmul_block_avx2(x + t0 * in, nt, in, w + r0 * in, nr, y + t0 * y_stride + r0, y_stride);
    }
  }
}
#endif

void hkv_matmul_rows_f32(const float *x, size_t tokens, size_t in, const float *w, size_t rows,
                         float *y, size_t y_stride) {
#ifdef HKV_X86
  if (hkv_kernels_vectorized()) {
    matmul_rows_avx2(x, tokens, in, w, rows, y, y_stride);
    return;
  }
#endif
  matmul_rows_portable(x, tokens, in, w, rows, y, y_stride);
}

// Row r keeps its first visible[r] scores (softmax-normalised) and zeroes the rest: causal
// attention's mask and softmax in one pass per row.
void hkv_causal_softmax_rows(float *scores, size_t rows, size_t n, const size_t *visible) {
  for (size_t r = 0; r < rows; r++) {
    float *row = scores + r * n;
    size_t v = visible[r] < n ? visible[r] : n;
    float m = 0;
    float sum = v > 0 ? hkv_softmax_exp(row, v, &m) : 0;
    float inv = sum > 0 ? 1.0f / sum : 0;
    for (size_t j = 0; j < v; j++) row[j] *= inv;
    for (size_t j = v; j < n; j++) row[j] = 0;
  }
}
