// What the kernel files share and nothing outside them sees: the CPU feature macros, fp16
// conversions and AVX2 helpers, and every variant of every kernel, which dispatch.c gathers
// into the two kernel tables.

#ifndef HKV_KERNELS_INTERNAL_H
#define HKV_KERNELS_INTERNAL_H

#include "hkv_kernels.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define HKV_X86 1
#include <immintrin.h>
#define HKV_AVX2 __attribute__((target("avx2,fma,f16c")))
#define HKV_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vbmi")))
#endif

#define HKV_INTERNAL __attribute__((visibility("hidden")))

static inline float half_to_float(uint16_t h) {
  _Float16 v;
  memcpy(&v, &h, sizeof v);
  return (float)v;
}

static inline uint16_t float_to_half(float f) {
  _Float16 v = (_Float16)f;
  uint16_t h;
  memcpy(&h, &v, sizeof h);
  return h;
}

// Token j of hkv_group_mean_buckets: the group's sum stored, its bucket stored and returned.
// The portable kernel is this for every token; the AVX2 one for the tokens past its vectors.
static inline uint16_t group_mean_bucket_at(const float *w, size_t heads, size_t n,
                                            const float *coef, int32_t top_bucket, size_t j,
                                            float *mean, uint16_t *bucket) {
  size_t chunks = (n + HKV_SELECT_CHUNK - 1) / HKV_SELECT_CHUNK, c = j / HKV_SELECT_CHUNK;
  float acc = 0;
  for (size_t h = 0; h < heads; h++) acc = fmaf(w[h * n + j], coef[h * chunks + c], acc);
  mean[j] = acc;
  uint32_t bits;
  memcpy(&bits, &acc, 4);
  int32_t gap = top_bucket - (int32_t)(bits >> 17);
  gap = gap < 0 ? 0 : gap > 4095 ? 4095 : gap;
  bucket[j] = (uint16_t)gap;
  return (uint16_t)gap;
}

// Tokens from...n-1 of hkv_keep_compress, one at a time, continuing a set of `kept` so far
// (kept_mass accumulates); returns the new count. Without branches (which side of the
// boundary a token falls is as good as random): every slot is written and counts only when
// the token is kept. A slot is never past the token being read, so rows compress in place.
static inline size_t keep_compress_from(const uint16_t *bucket, size_t n, size_t from,
                                        size_t kept, uint16_t boundary, float *w, size_t heads,
                                        const float *coef, int32_t *indices, float *kept_mass) {
  size_t chunks = (n + HKV_SELECT_CHUNK - 1) / HKV_SELECT_CHUNK;
  for (size_t j = from; j < n; j++) {
    int keep = bucket[j] < boundary || bucket[j] == HKV_TAU_TAKEN;
    indices[kept] = (int32_t)j;
    for (size_t h = 0; h < heads; h++) {
      float v = w[h * n + j] * coef[h * chunks + j / HKV_SELECT_CHUNK];
      w[h * n + kept] = v;
      kept_mass[h] += keep ? v : 0;
    }
    kept += (size_t)keep;
  }
  return kept;
}

// Portable versions (portable.c).
HKV_INTERNAL void f16_to_f32_portable(const uint16_t *src, float *dst, size_t n);
HKV_INTERNAL void f32_to_f16_portable(const float *src, uint16_t *dst, size_t n);
HKV_INTERNAL void scores_f16_portable(const float *q, size_t heads, const uint16_t *keys, size_t n, size_t d, float scale, float *scores);
HKV_INTERNAL void weighted_sum_dense_portable(const uint16_t *values, size_t n, size_t d, const float *probs, size_t heads, float *out);
HKV_INTERNAL void weighted_sum_sparse_multi_portable(const uint16_t *values, size_t d, const int32_t *idx, const float *w, size_t count, size_t heads, float *out);
HKV_INTERNAL void scores_f16_rows_portable(const float *q, size_t heads, const uint16_t *const *rows, size_t n, size_t d, float scale, float *scores);
HKV_INTERNAL void weighted_sum_rows_portable(const uint16_t *const *rows, size_t n, size_t d, const float *probs, size_t heads, float *out);
HKV_INTERNAL void pq_lut_x4_portable(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q, size_t heads, float *lut);
HKV_INTERNAL void sq4_scores_portable(const float *qs, const float *bias, size_t heads, const uint8_t *codes, size_t n, size_t d, float scale, float *scores, size_t stride);
HKV_INTERNAL float softmax_exp_portable(float *x, size_t n, float *max_out);
HKV_INTERNAL float softmax_exp_chunked_portable(const float *x, size_t n, float *w, float *chunk_max, float *max_out);
HKV_INTERNAL size_t keep_compress_portable(const uint16_t *bucket, size_t n, uint16_t boundary, float *w, size_t heads, const float *coef, int32_t *indices, float *kept_mass);
HKV_INTERNAL uint16_t group_mean_buckets_portable(const float *w, size_t heads, size_t n, const float *coef, int32_t top_bucket, float *mean, uint16_t *bucket);
HKV_INTERNAL void nearest_centroids_portable(const float *points, size_t n, size_t stride, size_t s, const float *centroids, const float *norms, size_t c, uint16_t *codes, size_t code_stride);
HKV_INTERNAL void sq_scores_generic(const float *qs, const float *bias, size_t heads, const uint8_t *codes, size_t n, size_t d, size_t bits, float scale, float *scores, size_t stride);
HKV_INTERNAL double scan_sum_portable(const float *x, size_t n);
HKV_INTERNAL void pq_scores_x4_portable(const float *lut, size_t g, size_t c, const uint16_t *codes, size_t n, float *scores);
HKV_INTERNAL void pq8_lut_portable(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q, size_t heads, float *scratch, uint8_t *lut, float *lut_scale, float *lut_bias);
HKV_INTERNAL void pq8_scores_portable(const uint8_t *lut, const float *lut_scale, const float *lut_bias, size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores, size_t stride);
HKV_INTERNAL void pq_scores_x4_u8_portable(const float *lut, size_t g, size_t c, const uint8_t *codes, size_t n, float *scores);
HKV_INTERNAL void pq4_scores_portable(const uint8_t *lut, const float *lut_scale, const float *lut_bias, size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores, size_t stride);

#ifdef HKV_X86

// Asks for `bytes` from p into L1, one cache line at a time. The hardware prefetcher does not
// keep up with these loops on its own (measured: scores 7.1 -> 2.7 ms per head at 128K).
HKV_AVX2 static inline void prefetch_lines(const void *p, size_t bytes) {
  for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + o, _MM_HINT_T0);
}

HKV_AVX2 static inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

// AVX2 + FMA + F16C versions (avx2_dense.c, avx2_coded.c).
HKV_AVX2 HKV_INTERNAL void f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n);
HKV_AVX2 HKV_INTERNAL void f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n);
HKV_AVX2 HKV_INTERNAL void scores_f16_avx2(const float *q, size_t heads, const uint16_t *keys, size_t n, size_t d, float scale, float *scores);
HKV_AVX2 HKV_INTERNAL void weighted_sum_dense_avx2(const uint16_t *values, size_t n, size_t d, const float *probs, size_t heads, float *out);
HKV_AVX2 HKV_INTERNAL void weighted_sum_sparse_multi_avx2(const uint16_t *values, size_t d, const int32_t *idx, const float *w, size_t count, size_t heads, float *out);
HKV_AVX2 HKV_INTERNAL void scores_f16_rows_avx2(const float *q, size_t heads, const uint16_t *const *rows, size_t n, size_t d, float scale, float *scores);
HKV_AVX2 HKV_INTERNAL void weighted_sum_rows_avx2(const uint16_t *const *rows, size_t n, size_t d, const float *probs, size_t heads, float *out);
HKV_AVX2 HKV_INTERNAL void pq_lut_x4_avx2(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q, size_t heads, float *lut);
HKV_AVX2 HKV_INTERNAL void sq4_scores_avx2(const float *qs, const float *bias, size_t heads, const uint8_t *codes, size_t n, size_t d, float scale, float *scores, size_t stride);
HKV_AVX2 HKV_INTERNAL float softmax_exp_avx2(float *x, size_t n, float *max_out);
HKV_AVX2 HKV_INTERNAL float softmax_exp_chunked_avx2(const float *x, size_t n, float *w, float *chunk_max, float *max_out);
HKV_AVX2 HKV_INTERNAL size_t keep_compress_avx2(const uint16_t *bucket, size_t n, uint16_t boundary, float *w, size_t heads, const float *coef, int32_t *indices, float *kept_mass);
HKV_AVX2 HKV_INTERNAL uint16_t group_mean_buckets_avx2(const float *w, size_t heads, size_t n, const float *coef, int32_t top_bucket, float *mean, uint16_t *bucket);
HKV_AVX2 HKV_INTERNAL void nearest_centroids_avx2(const float *points, size_t n, size_t stride, size_t s, const float *centroids, const float *norms, size_t c, uint16_t *codes, size_t code_stride);
HKV_AVX2 HKV_INTERNAL void nearest_centroids_f16_pairs_avx2(const float *points, size_t n, size_t stride, const uint16_t *centroids, size_t c, uint16_t *codes, size_t code_stride);
HKV_AVX2 HKV_INTERNAL void fold_group_i16_avx2(const float *q, size_t heads, size_t d, const uint16_t *scales, const uint16_t *zeros, float *qs, float *bias, int16_t *q16, float *alpha);
HKV_AVX2 HKV_INTERNAL void sq4_scores_i16_avx2(const int16_t *q16, const float *alpha, const float *bias, size_t heads, const uint8_t *codes, size_t n, size_t d, float scale, float *scores, size_t stride);
HKV_AVX2 HKV_INTERNAL double scan_sum_avx2(const float *x, size_t n);
HKV_AVX2 HKV_INTERNAL void pq_scores_x4_avx2(const float *lut, size_t g, size_t c, const uint16_t *codes, size_t n, float *scores);
HKV_AVX2 HKV_INTERNAL void pq_scores_x4_u8_avx2(const float *lut, size_t g, size_t c, const uint8_t *codes, size_t n, float *scores);
HKV_AVX512 HKV_INTERNAL void pq8_lut_avx512(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q, size_t heads, float *scratch, uint8_t *lut, float *lut_scale, float *lut_bias);
HKV_AVX512 HKV_INTERNAL void pq8_scores_avx512(const uint8_t *lut, const float *lut_scale, const float *lut_bias, size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores, size_t stride);
HKV_AVX2 HKV_INTERNAL void pq4_scores_avx2(const uint8_t *lut, const float *lut_scale, const float *lut_bias, size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores, size_t stride);

#endif

// Variants of the kernels in dense.c and rows.c, for the tables.
HKV_INTERNAL void matmul_rows_f32_portable(const float *x, size_t tokens, size_t in, const float *w, size_t rows, float *y, size_t y_stride);
HKV_INTERNAL void matmul_rows_f32_vectorized(const float *x, size_t tokens, size_t in, const float *w, size_t rows, float *y, size_t y_stride);
HKV_INTERNAL void matmul_rows_quantized_portable(const float *x, size_t tokens, size_t in, const void *w, int type, size_t rows, float *y, size_t y_stride);
HKV_INTERNAL void matmul_rows_quantized_vectorized(const float *x, size_t tokens, size_t in, const void *w, int type, size_t rows, float *y, size_t y_stride);
HKV_INTERNAL uint32_t crc32c_table_driven(uint32_t crc, const void *data, size_t n);
HKV_INTERNAL uint32_t crc32c_hardware(uint32_t crc, const void *data, size_t n);

/// The table in use (the vectorized one where the CPU supports it).
HKV_INTERNAL const hkv_kernel_table *hkv_active_kernels(void);

#endif
