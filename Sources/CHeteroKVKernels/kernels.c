// Hot loops of HeteroKV's numeric core. Each kernel has a portable C version and, on x86-64,
// an AVX2 + FMA + F16C version compiled with a target attribute and chosen once at run time,
// so the package needs no CPU-specific build flags.

#include "hkv_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define HKV_X86 1
#include <immintrin.h>
#define HKV_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

// ---------------------------------------------------------------------------------------------
// Portable versions.

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

static void f16_to_f32_portable(const uint16_t *src, float *dst, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

static void f32_to_f16_portable(const float *src, uint16_t *dst, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}

static void scores_f16_portable(const float *q, size_t heads, const uint16_t *keys, size_t n,
                                size_t d, float scale, float *scores) {
  for (size_t j = 0; j < n; j++) {
    const uint16_t *k = keys + j * d;
    for (size_t h = 0; h < heads; h++) {
      const float *qh = q + h * d;
      float acc = 0;
      for (size_t c = 0; c < d; c++) acc += qh[c] * half_to_float(k[c]);
      scores[h * n + j] = acc * scale;
    }
  }
}

static void weighted_sum_dense_portable(const uint16_t *values, size_t n, size_t d,
                                        const float *probs, size_t heads, float *out) {
  for (size_t j = 0; j < n; j++) {
    const uint16_t *v = values + j * d;
    for (size_t h = 0; h < heads; h++) {
      float p = probs[h * n + j];
      if (p == 0) continue;
      float *o = out + h * d;
      for (size_t c = 0; c < d; c++) o[c] += p * half_to_float(v[c]);
    }
  }
}

static void weighted_sum_sparse_multi_portable(const uint16_t *values, size_t d,
                                               const int32_t *idx, const float *w, size_t count,
                                               size_t heads, float *out) {
  for (size_t k = 0; k < count; k++) {
    const uint16_t *v = values + (size_t)idx[k] * d;
    for (size_t h = 0; h < heads; h++) {
      float p = w[h * count + k];
      if (p == 0) continue;
      for (size_t c = 0; c < d; c++) out[h * d + c] += p * half_to_float(v[c]);
    }
  }
}

// Generated for 16-bit codes and for 8-bit codes (codebooks of at most 256 centroids).
#define PQ_SCORES_X4_PORTABLE(NAME, CODE_T)                                                  \
  static void NAME(const float *lut, size_t g, size_t c, const CODE_T *codes, size_t n,      \
                   float *scores) {                                                          \
    for (size_t j = 0; j < n; j++) {                                                         \
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                                  \
      const CODE_T *cj = codes + j * g;                                                      \
      for (size_t i = 0; i < g; i++) {                                                       \
        const float *e = lut + (i * c + cj[i]) * 4;                                          \
        a0 += e[0];                                                                          \
        a1 += e[1];                                                                          \
        a2 += e[2];                                                                          \
        a3 += e[3];                                                                          \
      }                                                                                      \
      scores[j] = a0;                                                                        \
      scores[n + j] = a1;                                                                    \
      scores[2 * n + j] = a2;                                                                \
      scores[3 * n + j] = a3;                                                                \
    }                                                                                        \
  }
PQ_SCORES_X4_PORTABLE(pq_scores_x4_portable, uint16_t)
PQ_SCORES_X4_PORTABLE(pq_scores_x4_u8_portable, uint8_t)

static void pq_lut_x4_portable(const uint16_t *centroids, size_t g, size_t c, size_t s,
                               const float *q, size_t heads, float *lut) {
  size_t d = g * s;
  for (size_t i = 0; i < g; i++) {
    for (size_t m = 0; m < c; m++) {
      const uint16_t *cm = centroids + (i * c + m) * s;
      float *e = lut + (i * c + m) * 4;
      for (size_t h = 0; h < 4; h++) {
        float acc = 0;
        if (h < heads)
          for (size_t t = 0; t < s; t++) acc += q[h * d + i * s + t] * half_to_float(cm[t]);
        e[h] = acc;
      }
    }
  }
}

static void sq4_scores_portable(const float *qs, const float *bias, size_t heads,
                                const uint8_t *codes, size_t n, size_t d, float scale,
                                float *scores, size_t stride) {
  size_t half = d / 2;
  for (size_t j = 0; j < n; j++) {
    const uint8_t *cj = codes + j * half;
    for (size_t h = 0; h < heads; h++) {
      const float *qh = qs + h * d;
      float acc = bias[h];
      for (size_t b = 0; b < half; b++) {
        acc += qh[b] * (float)(cj[b] & 0x0F) + qh[b + half] * (float)(cj[b] >> 4);
      }
      scores[h * stride + j] = acc * scale;
    }
  }
}

static float softmax_exp_portable(float *x, size_t n, float *max_out) {
  float m = -INFINITY;
  for (size_t i = 0; i < n; i++)
    if (x[i] > m) m = x[i];
  *max_out = m;
  if (!(m > -INFINITY)) return 0;
  float s = 0;
  for (size_t i = 0; i < n; i++) {
    x[i] = expf(x[i] - m);
    s += x[i];
  }
  return s;
}

static void nearest_centroids_portable(const float *points, size_t n, size_t stride, size_t s,
                                       const float *centroids, const float *norms, size_t c,
                                       uint16_t *codes, size_t code_stride) {
  for (size_t j = 0; j < n; j++) {
    const float *x = points + j * stride;
    float best = INFINITY;
    size_t arg = 0;
    for (size_t m = 0; m < c; m++) {
      float dist = norms[m];
      for (size_t t = 0; t < s; t++) dist -= 2 * x[t] * centroids[t * c + m];
      if (dist < best) {
        best = dist;
        arg = m;
      }
    }
    codes[j * code_stride] = (uint16_t)arg;
  }
}

static void sq_scores_generic(const float *qs, const float *bias, size_t heads,
                              const uint8_t *codes, size_t n, size_t d, size_t bits, float scale,
                              float *scores, size_t stride) {
  size_t per = 8 / bits, width = d / per;
  unsigned mask = (1u << bits) - 1;
  float unpacked[1024];
  for (size_t j = 0; j < n; j++) {
    const uint8_t *cj = codes + j * width;
    for (size_t k = 0; k < per; k++)
      for (size_t b = 0; b < width; b++)
        unpacked[k * width + b] = (float)((cj[b] >> (k * bits)) & mask);
    for (size_t h = 0; h < heads; h++) {
      const float *qh = qs + h * d;
      float acc = 0;
      for (size_t c = 0; c < d; c++) acc += qh[c] * unpacked[c];
      scores[h * stride + j] = (bias[h] + acc) * scale;
    }
  }
}

static double scan_sum_portable(const float *x, size_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i];
    s1 += x[i + 1];
    s2 += x[i + 2];
    s3 += x[i + 3];
  }
  for (; i < n; i++) s0 += x[i];
  return s0 + s1 + s2 + s3;
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C versions.

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

HKV_AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; i++) dst[i] = half_to_float(src[i]);
}

HKV_AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)(dst + i), h);
  }
  for (; i < n; i++) dst[i] = float_to_half(src[i]);
}

// Four query heads, four key rows at a time, head dim a multiple of 64: each 64-dim half row
// is converted once into eight registers and serves the four heads; the four per-head
// accumulators reduce with horizontal adds into one vector of four head scores per row, and
// four rows transpose into four head-major stores.
HKV_AVX2 static inline __m128 row_scores_x4(const uint16_t *k, const float *q, size_t d) {
  // Two accumulators per head (even and odd chunks) halve the FMA dependency chains.
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(),
         b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
  for (size_t o = 0; o < d; o += 16) {
    __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + o)));
    __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + o + 8)));
    a0 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + o), a0);
    a1 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + d + o), a1);
    a2 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + 2 * d + o), a2);
    a3 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + 3 * d + o), a3);
    b0 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + o + 8), b0);
    b1 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + d + o + 8), b1);
    b2 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + 2 * d + o + 8), b2);
    b3 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + 3 * d + o + 8), b3);
  }
  __m256 h01 = _mm256_hadd_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1));
  __m256 h23 = _mm256_hadd_ps(_mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3));
  __m256 h = _mm256_hadd_ps(h01, h23);
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

HKV_AVX2 static void scores_f16_x4_avx2(const float *q, const uint16_t *keys, size_t n,
                                        size_t d, float scale, float *scores) {
  __m128 sc = _mm_set1_ps(scale);
  size_t j = 0;
  size_t rowBytes = d * 2;
  for (; j + 4 <= n; j += 4) {
    // Four rows ahead-of-time: every cache line of the block 16 rows on.
    if (j + 20 <= n) prefetch_lines(keys + (j + 16) * d, 4 * rowBytes);
    __m128 r0 = row_scores_x4(keys + j * d, q, d);
    __m128 r1 = row_scores_x4(keys + (j + 1) * d, q, d);
    __m128 r2 = row_scores_x4(keys + (j + 2) * d, q, d);
    __m128 r3 = row_scores_x4(keys + (j + 3) * d, q, d);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(scores + j, _mm_mul_ps(r0, sc));
    _mm_storeu_ps(scores + n + j, _mm_mul_ps(r1, sc));
    _mm_storeu_ps(scores + 2 * n + j, _mm_mul_ps(r2, sc));
    _mm_storeu_ps(scores + 3 * n + j, _mm_mul_ps(r3, sc));
  }
  for (; j < n; j++) {
    float r[4];
    _mm_storeu_ps(r, _mm_mul_ps(row_scores_x4(keys + j * d, q, d), sc));
    for (int h = 0; h < 4; h++) scores[h * n + j] = r[h];
  }
}

// One key row against up to 8 query heads: the row is converted once and reused per head.
HKV_AVX2 static void scores_f16_avx2(const float *q, size_t heads, const uint16_t *keys,
                                     size_t n, size_t d, float scale, float *scores) {
  if (heads % 4 == 0 && d % 16 == 0) {
    for (size_t h = 0; h < heads; h += 4) scores_f16_x4_avx2(q + h * d, keys, n, d, scale, scores + h * n);
    return;
  }
  if (d % 8 != 0 || d > 256) {
    scores_f16_portable(q, heads, keys, n, d, scale, scores);
    return;
  }
  size_t chunks = d / 8;
  __m256 kv[32];
  for (size_t j = 0; j < n; j++) {
    const uint16_t *k = keys + j * d;
    if (j + 16 < n) prefetch_lines(keys + (j + 16) * d, d * 2);
    for (size_t c = 0; c < chunks; c++)
      kv[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + c * 8)));
    for (size_t h = 0; h < heads; h++) {
      const float *qh = q + h * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      size_t c = 0;
      for (; c + 2 <= chunks; c += 2) {
        a0 = _mm256_fmadd_ps(kv[c], _mm256_loadu_ps(qh + c * 8), a0);
        a1 = _mm256_fmadd_ps(kv[c + 1], _mm256_loadu_ps(qh + c * 8 + 8), a1);
      }
      if (c < chunks) a0 = _mm256_fmadd_ps(kv[c], _mm256_loadu_ps(qh + c * 8), a0);
      scores[h * n + j] = hsum256(_mm256_add_ps(a0, a1)) * scale;
    }
  }
}

// acc[h] += p[h][r] * row_r for four fp16 rows and every head, one 8-dim chunk at a time: each
// head's accumulator is loaded and stored once per four rows.
HKV_AVX2 static inline void accumulate_four_rows(const uint16_t *const v[4], __m256 pb[8][4],
                                                 size_t heads, size_t d, float *out) {
  for (size_t c = 0; c < d; c += 8) {
    __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v[0] + c)));
    __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v[1] + c)));
    __m256 x2 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v[2] + c)));
    __m256 x3 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v[3] + c)));
    for (size_t h = 0; h < heads; h++) {
      __m256 acc = _mm256_loadu_ps(out + h * d + c);
      acc = _mm256_fmadd_ps(pb[h][0], x0, acc);
      acc = _mm256_fmadd_ps(pb[h][1], x1, acc);
      acc = _mm256_fmadd_ps(pb[h][2], x2, acc);
      acc = _mm256_fmadd_ps(pb[h][3], x3, acc);
      _mm256_storeu_ps(out + h * d + c, acc);
    }
  }
}

// Four value rows at a time: per 8-dim chunk, each head's accumulator is loaded once, takes
// four FMAs (one per row, with the row's probability broadcast once per block) and is stored
// once, so stores fall to a quarter.
HKV_AVX2 static void weighted_sum_dense_blocked_avx2(const uint16_t *values, size_t n, size_t d,
                                                     const float *probs, size_t heads,
                                                     float *out) {
  __m256 pb[8][4];
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const uint16_t *v0 = values + j * d;
    if (j + 20 <= n) prefetch_lines(v0 + 16 * d, 4 * d * 2);
    int any = 0;
    for (size_t h = 0; h < heads; h++)
      for (int r = 0; r < 4; r++) {
        float p = probs[h * n + j + r];
        any |= p != 0;
        pb[h][r] = _mm256_set1_ps(p);
      }
    if (!any) continue;
    const uint16_t *const rows[4] = {v0, v0 + d, v0 + 2 * d, v0 + 3 * d};
    accumulate_four_rows(rows, pb, heads, d, out);
  }
  if (j < n) {
    // Tail rows: reuse the portable path on a shifted view.
    for (; j < n; j++) {
      const uint16_t *v = values + j * d;
      for (size_t h = 0; h < heads; h++) {
        float p = probs[h * n + j];
        for (size_t c = 0; c < d; c++) out[h * d + c] += p * half_to_float(v[c]);
      }
    }
  }
}

HKV_AVX2 static void weighted_sum_dense_avx2(const uint16_t *values, size_t n, size_t d,
                                             const float *probs, size_t heads, float *out) {
  if (d % 8 == 0 && heads <= 8) {
    weighted_sum_dense_blocked_avx2(values, n, d, probs, heads, out);
    return;
  }
  weighted_sum_dense_portable(values, n, d, probs, heads, out);
}

// Rows by index, four at a time, every head's weight applied to each row read once.
HKV_AVX2 static void weighted_sum_sparse_multi_avx2(const uint16_t *values, size_t d,
                                                    const int32_t *idx, const float *w,
                                                    size_t count, size_t heads, float *out) {
  if (d % 8 != 0 || heads > 8) {
    weighted_sum_sparse_multi_portable(values, d, idx, w, count, heads, out);
    return;
  }
  __m256 pb[8][4];
  size_t k = 0;
  for (; k + 4 <= count; k += 4) {
    if (k + 12 <= count)
      for (int r = 8; r < 12; r++) prefetch_lines(values + (size_t)idx[k + r] * d, d * 2);
    const uint16_t *const v[4] = {values + (size_t)idx[k] * d, values + (size_t)idx[k + 1] * d,
                                  values + (size_t)idx[k + 2] * d, values + (size_t)idx[k + 3] * d};
    for (size_t h = 0; h < heads; h++)
      for (int r = 0; r < 4; r++) pb[h][r] = _mm256_set1_ps(w[h * count + k + r]);
    accumulate_four_rows(v, pb, heads, d, out);
  }
  for (; k < count; k++) {
    const uint16_t *v = values + (size_t)idx[k] * d;
    for (size_t h = 0; h < heads; h++) {
      float p = w[h * count + k];
      for (size_t c = 0; c < d; c++) out[h * d + c] += p * half_to_float(v[c]);
    }
  }
}

// Eight tokens at a time: each code selects a 16-byte entry holding the four heads' partial
// scores, so one load serves the whole query group; eight independent accumulators hide the
// add latency, and two 4x4 transposes write head-major rows.
// Four codes per load (64 bits of 16-bit codes, 32 bits of 8-bit codes); the shifts run on
// the ALUs, not the load ports. WORD_T is the load, BITS the code width.
#define PQ_SCORES_X4_AVX2(NAME, CODE_T, WORD_T, BITS)                                        \
  HKV_AVX2 static void NAME(const float *lut, size_t g, size_t c, const CODE_T *codes,       \
                            size_t n, float *scores) {                                       \
    const WORD_T mask = ((WORD_T)1 << BITS) - 1;                                             \
    size_t j = 0;                                                                            \
    for (; j + 8 <= n; j += 8) {                                                             \
      const CODE_T *cj = codes + j * g;                                                      \
      if (j + 40 <= n) prefetch_lines(cj + 32 * g, 8 * g * sizeof(CODE_T));                  \
      __m128 a[8];                                                                           \
      for (int t = 0; t < 8; t++) a[t] = _mm_setzero_ps();                                   \
      size_t i = 0;                                                                          \
      for (; i + 4 <= g; i += 4) {                                                           \
        const float *b0 = lut + i * c * 4, *b1 = b0 + c * 4, *b2 = b1 + c * 4,               \
                    *b3 = b2 + c * 4;                                                        \
        for (int t = 0; t < 8; t++) {                                                        \
          WORD_T w;                                                                          \
          memcpy(&w, cj + t * g + i, sizeof w);                                              \
          __m128 x = _mm_add_ps(_mm_loadu_ps(b0 + (size_t)(w & mask) * 4),                   \
                                _mm_loadu_ps(b1 + (size_t)((w >> BITS) & mask) * 4));        \
          __m128 y = _mm_add_ps(_mm_loadu_ps(b2 + (size_t)((w >> (2 * BITS)) & mask) * 4),   \
                                _mm_loadu_ps(b3 + (size_t)(w >> (3 * BITS)) * 4));           \
          a[t] = _mm_add_ps(a[t], _mm_add_ps(x, y));                                         \
        }                                                                                    \
      }                                                                                      \
      for (; i < g; i++) {                                                                   \
        const float *base = lut + i * c * 4;                                                 \
        for (int t = 0; t < 8; t++)                                                          \
          a[t] = _mm_add_ps(a[t], _mm_loadu_ps(base + (size_t)cj[t * g + i] * 4));           \
      }                                                                                      \
      _MM_TRANSPOSE4_PS(a[0], a[1], a[2], a[3]);                                             \
      _MM_TRANSPOSE4_PS(a[4], a[5], a[6], a[7]);                                             \
      for (int h = 0; h < 4; h++) {                                                          \
        _mm_storeu_ps(scores + h * n + j, a[h]);                                             \
        _mm_storeu_ps(scores + h * n + j + 4, a[4 + h]);                                     \
      }                                                                                      \
    }                                                                                        \
    for (size_t t = j; t < n; t++) {                                                         \
      float acc[4] = {0, 0, 0, 0};                                                           \
      const CODE_T *ct = codes + t * g;                                                      \
      for (size_t i = 0; i < g; i++)                                                         \
        for (int h = 0; h < 4; h++) acc[h] += lut[(i * c + ct[i]) * 4 + h];                  \
      for (int h = 0; h < 4; h++) scores[h * n + t] = acc[h];                                \
    }                                                                                        \
  }
PQ_SCORES_X4_AVX2(pq_scores_x4_avx2, uint16_t, uint64_t, 16)
PQ_SCORES_X4_AVX2(pq_scores_x4_u8_avx2, uint8_t, uint32_t, 8)

// Per sub-space, the four heads' query slices form s column vectors of 4 lanes; each centroid
// entry is the sum over its s coordinates of coordinate x column.
HKV_AVX2 static void pq_lut_x4_avx2(const uint16_t *centroids, size_t g, size_t c, size_t s,
                                    const float *q, size_t heads, float *lut) {
  if (s > 16) {
    pq_lut_x4_portable(centroids, g, c, s, q, heads, lut);
    return;
  }
  size_t d = g * s;
  __m128 cols[16];
  float tmp[16];
  for (size_t i = 0; i < g; i++) {
    for (size_t t = 0; t < s; t++) {
      float lane[4];
      for (size_t h = 0; h < 4; h++) lane[h] = h < heads ? q[h * d + i * s + t] : 0.0f;
      cols[t] = _mm_loadu_ps(lane);
    }
    const uint16_t *ci = centroids + i * c * s;
    float *li = lut + i * c * 4;
    size_t m = 0;
    // Two (s = 4) or four (s = 2) centroids per 8-wide conversion.
    for (; (m + 1) * s <= c * s && m * s + 8 <= c * s && 8 % s == 0; m += 8 / s) {
      _mm256_storeu_ps(tmp, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ci + m * s))));
      for (size_t u = 0; u < 8 / s; u++) {
        __m128 acc = _mm_mul_ps(_mm_set1_ps(tmp[u * s]), cols[0]);
        for (size_t t = 1; t < s; t++) acc = _mm_fmadd_ps(_mm_set1_ps(tmp[u * s + t]), cols[t], acc);
        _mm_storeu_ps(li + (m + u) * 4, acc);
      }
    }
    for (; m < c; m++) {
      const uint16_t *cm = ci + m * s;
      for (size_t t = 0; t < s; t++) tmp[t] = half_to_float(cm[t]);
      __m128 acc = _mm_mul_ps(_mm_set1_ps(tmp[0]), cols[0]);
      for (size_t t = 1; t < s; t++) acc = _mm_fmadd_ps(_mm_set1_ps(tmp[t]), cols[t], acc);
      _mm_storeu_ps(li + m * 4, acc);
    }
  }
}

// Chunk-outer, heads-inner: each 8-byte slice of codes unpacks into two vectors (low and high
// nibbles) that every head uses at once, so nothing spills; four heads reduce together.
HKV_AVX2 static void sq4_scores_avx2(const float *qs, const float *bias, size_t heads,
                                     const uint8_t *codes, size_t n, size_t d, float scale,
                                     float *scores, size_t stride) {
  if (d % 16 != 0 || heads % 4 != 0) {
    sq4_scores_portable(qs, bias, heads, codes, n, d, scale, scores, stride);
    return;
  }
  size_t half = d / 2;
  const __m256i mask = _mm256_set1_epi32(0x0F);
  for (size_t j = 0; j < n; j++) {
    const uint8_t *cj = codes + j * half;
    if ((j & 3) == 0 && j + 20 <= n) prefetch_lines(cj + 16 * half, 4 * half);
    for (size_t h = 0; h < heads; h += 4) {
      const float *q0 = qs + h * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
             a3 = _mm256_setzero_ps();
      for (size_t b = 0; b < half; b += 8) {
        __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(cj + b)));
        __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(w, mask));
        __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4));
        a0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(q0 + b), a0);
        a1 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(q1 + b), a1);
        a2 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(q2 + b), a2);
        a3 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(q3 + b), a3);
        a0 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(q0 + half + b), a0);
        a1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(q1 + half + b), a1);
        a2 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(q2 + half + b), a2);
        a3 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(q3 + half + b), a3);
      }
      __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      float r[4];
      _mm_storeu_ps(r, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
      for (int u = 0; u < 4; u++) scores[(h + u) * stride + j] = (bias[h + u] + r[u]) * scale;
    }
  }
}

// exp(x) for x <= 0: x = k ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial, 2^k by
// building the exponent bits. Relative error about 2e-7; inputs below -87 flush to 0.
HKV_AVX2 static inline __m256 exp256_nonpositive(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  __m256 out = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, out);
}

HKV_AVX2 static float softmax_exp_avx2(float *x, size_t n, float *max_out) {
  __m256 vm = _mm256_set1_ps(-INFINITY);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
  float tmp[8];
  _mm256_storeu_ps(tmp, vm);
  float m = -INFINITY;
  for (int t = 0; t < 8; t++)
    if (tmp[t] > m) m = tmp[t];
  for (; i < n; i++)
    if (x[i] > m) m = x[i];
  *max_out = m;
  if (!(m > -INFINITY)) return 0;
  __m256 bm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp256_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), bm));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float s = hsum256(acc);
  for (; i < n; i++) {
    x[i] = expf(x[i] - m);
    s += x[i];
  }
  return s;
}

// Four points per pass over the centroids, so each centroid load serves four distance
// computations; per lane the running minimum and its index.
HKV_AVX2 static void nearest_centroids_avx2(const float *points, size_t n, size_t stride,
                                            size_t s, const float *centroids,
                                            const float *norms, size_t c, uint16_t *codes,
                                            size_t code_stride) {
  if (c % 8 != 0 || s > 16) {
    nearest_centroids_portable(points, n, stride, s, centroids, norms, c, codes, code_stride);
    return;
  }
  enum { P = 4 };
  __m256 xs[P][16];
  const __m256i step = _mm256_set1_epi32(8);
  for (size_t j0 = 0; j0 < n; j0 += P) {
    size_t count = n - j0 < P ? n - j0 : P;
    for (size_t p = 0; p < P; p++) {
      const float *x = points + (j0 + (p < count ? p : 0)) * stride;
      for (size_t t = 0; t < s; t++) xs[p][t] = _mm256_set1_ps(-2.0f * x[t]);
    }
    __m256 best[P];
    __m256i bestIdx[P];
    for (size_t p = 0; p < P; p++) {
      best[p] = _mm256_set1_ps(INFINITY);
      bestIdx[p] = _mm256_setzero_si256();
    }
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (size_t m = 0; m < c; m += 8) {
      __m256 nm = _mm256_loadu_ps(norms + m);
      __m256 dist[P] = {nm, nm, nm, nm};
      for (size_t t = 0; t < s; t++) {
        __m256 ct = _mm256_loadu_ps(centroids + t * c + m);
        for (size_t p = 0; p < P; p++) dist[p] = _mm256_fmadd_ps(xs[p][t], ct, dist[p]);
      }
      for (size_t p = 0; p < P; p++) {
        __m256 lt = _mm256_cmp_ps(dist[p], best[p], _CMP_LT_OQ);
        best[p] = _mm256_min_ps(dist[p], best[p]);
        bestIdx[p] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bestIdx[p]),
                                                          _mm256_castsi256_ps(idx), lt));
      }
      idx = _mm256_add_epi32(idx, step);
    }
    for (size_t p = 0; p < count; p++) {
      float bv[8];
      int32_t bi[8];
      _mm256_storeu_ps(bv, best[p]);
      _mm256_storeu_si256((__m256i *)bi, bestIdx[p]);
      float b = bv[0];
      int32_t a = bi[0];
      for (int t = 1; t < 8; t++)
        if (bv[t] < b || (bv[t] == b && bi[t] < a)) {
          b = bv[t];
          a = bi[t];
        }
      codes[(j0 + p) * code_stride] = (uint16_t)a;
    }
  }
}

// Folds one group's fp16 scales and zero points into the query (qs = q * s, bias = q . z)
// and quantizes each head's folded query to int16 with a per-head step alpha. d % 16 == 0.
HKV_AVX2 static void fold_group_i16_avx2(const float *q, size_t heads, size_t d,
                                         const uint16_t *scales, const uint16_t *zeros,
                                         float *qs, float *bias, int16_t *q16, float *alpha) {
  for (size_t h = 0; h < heads; h++) {
    const float *qh = q + h * d;
    float *out = qs + h * d;
    __m256 b = _mm256_setzero_ps(), m = _mm256_setzero_ps();
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (size_t c = 0; c < d; c += 8) {
      __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + c)));
      __m256 zp = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zeros + c)));
      __m256 x = _mm256_loadu_ps(qh + c);
      __m256 f = _mm256_mul_ps(x, sc);
      _mm256_storeu_ps(out + c, f);
      b = _mm256_fmadd_ps(x, zp, b);
      m = _mm256_max_ps(m, _mm256_and_ps(f, abs_mask));
    }
    bias[h] = hsum256(b);
    float mm[8];
    _mm256_storeu_ps(mm, m);
    float mx = 0;
    for (int t = 0; t < 8; t++) mx = mx > mm[t] ? mx : mm[t];
    float a = mx > 0 ? mx / 32767.0f : 1.0f;
    alpha[h] = a;
    __m256 inv = _mm256_set1_ps(1.0f / a);
    for (size_t c = 0; c < d; c += 16) {
      __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(out + c), inv));
      __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(out + c + 8), inv));
      // packs works per 128-bit lane; the permute restores channel order.
      __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8);
      _mm256_storeu_si256((__m256i *)(q16 + h * d + c), p);
    }
  }
}

// 4-bit codes against an int16 query (`q16[h] * alpha[h]` approximates the folded query to 1
// part in 32767 of its largest channel): nibbles widen to 16-bit lanes and vpmaddwd does two
// multiplies and an add per lane, half the instructions of the float path. Four heads reduce
// together. d a multiple of 64, heads a multiple of 4.
HKV_AVX2 static void sq4_scores_i16_avx2(const int16_t *q16, const float *alpha,
                                         const float *bias, size_t heads, const uint8_t *codes,
                                         size_t n, size_t d, float scale, float *scores,
                                         size_t stride) {
  size_t half = d / 2;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (size_t j = 0; j < n; j++) {
    const uint8_t *cj = codes + j * half;
    if ((j & 3) == 0 && j + 20 <= n) prefetch_lines(cj + 16 * half, 4 * half);
    for (size_t h = 0; h < heads; h += 4) {
      const int16_t *q0 = q16 + h * d;
      __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256(),
              a2 = _mm256_setzero_si256(), a3 = _mm256_setzero_si256();
      for (size_t b = 0; b < half; b += 32) {
        __m256i packed = _mm256_loadu_si256((const __m256i *)(cj + b));
        __m256i lo = _mm256_and_si256(packed, mask);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
        // Channels b .. b+31 (low nibbles) and half+b .. half+b+31 (high nibbles).
        __m256i c[4] = {_mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)),
                        _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1)),
                        _mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)),
                        _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1))};
        const size_t off[4] = {b, b + 16, half + b, half + b + 16};
        for (int k = 0; k < 4; k++) {
          a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(c[k], _mm256_loadu_si256((const __m256i *)(q0 + off[k]))));
          a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(c[k], _mm256_loadu_si256((const __m256i *)(q0 + d + off[k]))));
          a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(c[k], _mm256_loadu_si256((const __m256i *)(q0 + 2 * d + off[k]))));
          a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(c[k], _mm256_loadu_si256((const __m256i *)(q0 + 3 * d + off[k]))));
        }
      }
      __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
      __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
      __m128 r = _mm_fmadd_ps(_mm_cvtepi32_ps(sum), _mm_loadu_ps(alpha + h), _mm_loadu_ps(bias + h));
      r = _mm_mul_ps(r, _mm_set1_ps(scale));
      float out[4];
      _mm_storeu_ps(out, r);
      for (int u = 0; u < 4; u++) scores[(h + u) * stride + j] = out[u];
    }
  }
}

HKV_AVX2 static double scan_sum_avx2(const float *x, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + i + 24));
  }
  double total = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; i++) total += x[i];
  return total;
}

#endif

// ---------------------------------------------------------------------------------------------
// Dispatch.

static int vectorized_state = -1;

int hkv_kernels_vectorized(void) {
  int state = __atomic_load_n(&vectorized_state, __ATOMIC_RELAXED);
  if (state >= 0) return state;
#ifdef HKV_X86
  __builtin_cpu_init();
  state = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("f16c");
#else
  state = 0;
#endif
  __atomic_store_n(&vectorized_state, state, __ATOMIC_RELAXED);
  return state;
}

void hkv_kernels_force_portable(int force) {
  __atomic_store_n(&vectorized_state, force ? 0 : -1, __ATOMIC_RELAXED);
}

#ifdef HKV_X86
#define DISPATCH(avx, portable, ...) \
  do {                                \
    if (hkv_kernels_vectorized())     \
      avx(__VA_ARGS__);               \
    else                              \
      portable(__VA_ARGS__);          \
  } while (0)
#else
#define DISPATCH(avx, portable, ...) portable(__VA_ARGS__)
#endif

void hkv_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
  DISPATCH(f16_to_f32_avx2, f16_to_f32_portable, src, dst, n);
}

void hkv_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
  DISPATCH(f32_to_f16_avx2, f32_to_f16_portable, src, dst, n);
}

void hkv_scores_f16(const float *q, size_t heads, const uint16_t *keys, size_t n, size_t d,
                    float scale, float *scores) {
  DISPATCH(scores_f16_avx2, scores_f16_portable, q, heads, keys, n, d, scale, scores);
}

void hkv_weighted_sum_dense_f16(const uint16_t *values, size_t n, size_t d, const float *probs,
                                size_t heads, float *out) {
  DISPATCH(weighted_sum_dense_avx2, weighted_sum_dense_portable, values, n, d, probs, heads, out);
}

void hkv_weighted_sum_sparse_multi_f16(const uint16_t *values, size_t d, const int32_t *indices,
                                       const float *weights, size_t count, size_t heads,
                                       float *out) {
  DISPATCH(weighted_sum_sparse_multi_avx2, weighted_sum_sparse_multi_portable, values, d,
           indices, weights, count, heads, out);
}

void hkv_pq_scores_x4(const float *lut, size_t g, size_t c, const uint16_t *codes, size_t n,
                      float *scores) {
  DISPATCH(pq_scores_x4_avx2, pq_scores_x4_portable, lut, g, c, codes, n, scores);
}

void hkv_pq_scores_x4_u8(const float *lut, size_t g, size_t c, const uint8_t *codes, size_t n,
                         float *scores) {
  DISPATCH(pq_scores_x4_u8_avx2, pq_scores_x4_u8_portable, lut, g, c, codes, n, scores);
}

void hkv_pq_lut_x4(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                   size_t heads, float *lut) {
  DISPATCH(pq_lut_x4_avx2, pq_lut_x4_portable, centroids, g, c, s, q, heads, lut);
}

void hkv_sq4_scores(const float *qs, const float *bias, size_t heads, const uint8_t *codes,
                    size_t n, size_t d, float scale, float *scores, size_t stride) {
  DISPATCH(sq4_scores_avx2, sq4_scores_portable, qs, bias, heads, codes, n, d, scale, scores,
           stride);
}

void hkv_nearest_centroids(const float *points, size_t n, size_t stride, size_t s,
                           const float *centroids, const float *norms, size_t c,
                           uint16_t *codes, size_t code_stride) {
  DISPATCH(nearest_centroids_avx2, nearest_centroids_portable, points, n, stride, s, centroids,
           norms, c, codes, code_stride);
}

float hkv_softmax_exp(float *x, size_t n, float *max_out) {
#ifdef HKV_X86
  if (hkv_kernels_vectorized()) return softmax_exp_avx2(x, n, max_out);
#endif
  return softmax_exp_portable(x, n, max_out);
}

void hkv_sq_scores(const float *qs, const float *bias, size_t heads, const uint8_t *codes,
                   size_t n, size_t d, size_t bits, float scale, float *scores, size_t stride) {
  if (bits == 4) {
    hkv_sq4_scores(qs, bias, heads, codes, n, d, scale, scores, stride);
  } else if (d <= 1024) {
    sq_scores_generic(qs, bias, heads, codes, n, d, bits, scale, scores, stride);
  }
}

void hkv_sq_group_scores(const float *q, size_t heads, const uint8_t *codes,
                         const uint16_t *scales, const uint16_t *zeros, size_t groups,
                         size_t group_size, size_t d, size_t bits, float scale, float *scores,
                         size_t stride) {
  if (groups == 0 || heads == 0) return;
  float *buf = malloc(sizeof(float) * (heads * d + heads + 2 * d));
  if (!buf) return;
  float *qs = buf, *bias = buf + heads * d, *sc = bias + heads, *zp = sc + d;
  // The integer path: 4-bit codes, whole groups of four heads, d a multiple of 64.
  int16_t *q16 = NULL;
  float alpha[1024];
#ifdef HKV_X86
  if (bits == 4 && d % 64 == 0 && heads % 4 == 0 && heads <= 1024 && hkv_kernels_vectorized())
    q16 = malloc(sizeof(int16_t) * heads * d);
#endif
  size_t code_bytes = group_size * d * bits / 8;
  for (size_t g = 0; g < groups; g++) {
#ifdef HKV_X86
    if (q16) {
      fold_group_i16_avx2(q, heads, d, scales + g * d, zeros + g * d, qs, bias, q16, alpha);
      sq4_scores_i16_avx2(q16, alpha, bias, heads, codes + g * code_bytes, group_size, d, scale,
                          scores + g * group_size, stride);
      continue;
    }
#endif
    hkv_f16_to_f32(scales + g * d, sc, d);
    hkv_f16_to_f32(zeros + g * d, zp, d);
    for (size_t h = 0; h < heads; h++) {
      float b = 0;
      for (size_t c = 0; c < d; c++) {
        qs[h * d + c] = q[h * d + c] * sc[c];
        b += q[h * d + c] * zp[c];
      }
      bias[h] = b;
    }
    hkv_sq_scores(qs, bias, heads, codes + g * code_bytes, group_size, d, bits, scale,
                  scores + g * group_size, stride);
  }
  free(q16);
  free(buf);
}

// Candidates of the boundary bucket sort by descending weight, ties to the lower index.
static _Thread_local const float *tau_sort_weights;
static int by_weight_desc(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  float wx = tau_sort_weights[x], wy = tau_sort_weights[y];
  if (wx > wy) return -1;
  if (wx < wy) return 1;
  return (x > y) - (x < y);
}
static int by_index(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

size_t hkv_tau_select(const float *scores, size_t n, float tau, size_t cap, int32_t *indices,
                      float *weights, float *kept_mass) {
  // 1/64 nat per bucket over 64 nats: the boundary bucket that must be sorted stays small.
  enum { BUCKETS = 4096 };
  const float per_nat = 64.0f;
  *kept_mass = 0;
  if (n == 0) return 0;
  float *w = malloc(sizeof(float) * n);
  uint16_t *bucket = malloc(sizeof(uint16_t) * n);
  int32_t *cand = malloc(sizeof(int32_t) * n);
  if (!w || !bucket || !cand) {
    free(w);
    free(bucket);
    free(cand);
    return 0;
  }
  memcpy(w, scores, sizeof(float) * n);
  float m;
  float total = hkv_softmax_exp(w, n, &m);
  if (!(m > -INFINITY) || !(total > 0) || total == INFINITY) {
    free(w);
    free(bucket);
    free(cand);
    return 0;
  }
  // Four interleaved histograms, so consecutive tokens in one bucket do not wait on each
  // other's read-modify-write.
  static _Thread_local float mass4[4][BUCKETS];
  memset(mass4, 0, sizeof mass4);
  for (size_t j = 0; j < n; j++) {
    float gap = (m - scores[j]) * per_nat;
    int b = gap < (float)(BUCKETS - 1) ? (int)gap : BUCKETS - 1;
    bucket[j] = (uint16_t)b;
    mass4[j & 3][b] += w[j];
  }
  double mass[BUCKETS];
  for (int b = 0; b < BUCKETS; b++)
    mass[b] = (double)mass4[0][b] + mass4[1][b] + mass4[2][b] + mass4[3][b];
  double target = (double)tau * (double)total, cumulative = 0;
  int boundary = BUCKETS - 1;
  for (int b = 0; b < BUCKETS; b++) {
    if (cumulative + mass[b] >= target) {
      boundary = b;
      break;
    }
    cumulative += mass[b];
  }
  size_t kept = 0, candidates = 0;
  for (size_t j = 0; j < n; j++) {
    if (bucket[j] < boundary)
      indices[kept++] = (int32_t)j;
    else if (bucket[j] == boundary)
      cand[candidates++] = (int32_t)j;
  }
  tau_sort_weights = w;
  qsort(cand, candidates, sizeof(int32_t), by_weight_desc);
  size_t taken = 0;
  while (taken < candidates && cumulative < target) cumulative += w[cand[taken++]];
  qsort(cand, taken, sizeof(int32_t), by_index);
  // Merge the two ascending lists from the back, in place in `indices`.
  size_t i = kept, k = taken, out = kept + taken;
  while (k > 0) {
    if (i > 0 && indices[i - 1] > cand[k - 1])
      indices[--out] = indices[--i];
    else
      indices[--out] = cand[--k];
  }
  kept += taken;
  if (cap > 0 && kept > cap) {
    qsort(indices, kept, sizeof(int32_t), by_weight_desc);
    kept = cap;
    qsort(indices, kept, sizeof(int32_t), by_index);
  }
  float inv = 1.0f / total, sum = 0;
  for (size_t t = 0; t < kept; t++) {
    weights[t] = w[indices[t]] * inv;
    sum += weights[t];
  }
  *kept_mass = sum;
  free(w);
  free(bucket);
  free(cand);
  return kept;
}

double hkv_scan_sum_f32(const float *x, size_t n) {
#ifdef HKV_X86
  if (hkv_kernels_vectorized()) return scan_sum_avx2(x, n);
#endif
  return scan_sum_portable(x, n);
}
