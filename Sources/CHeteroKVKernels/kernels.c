// Hot loops of HeteroKV's numeric core. Each kernel has a portable C version and, on x86-64,
// an AVX2 + FMA + F16C version compiled with a target attribute and chosen once at run time,
// so the package needs no CPU-specific build flags.

#include "hkv_kernels.h"

#include <math.h>
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

static void weighted_sum_sparse_portable(const uint16_t *values, size_t d, const int32_t *idx,
                                         const float *w, size_t count, float *out) {
  for (size_t k = 0; k < count; k++) {
    const uint16_t *v = values + (size_t)idx[k] * d;
    float p = w[k];
    for (size_t c = 0; c < d; c++) out[c] += p * half_to_float(v[c]);
  }
}

static void pq_scores_x4_portable(const float *lut, size_t g, size_t c, const uint16_t *codes,
                                  size_t n, float *scores) {
  for (size_t j = 0; j < n; j++) {
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    const uint16_t *cj = codes + j * g;
    for (size_t i = 0; i < g; i++) {
      const float *e = lut + (i * c + cj[i]) * 4;
      a0 += e[0];
      a1 += e[1];
      a2 += e[2];
      a3 += e[3];
    }
    scores[j] = a0;
    scores[n + j] = a1;
    scores[2 * n + j] = a2;
    scores[3 * n + j] = a3;
  }
}

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

// One key row against up to 8 query heads: the row is converted once and reused per head.
HKV_AVX2 static void scores_f16_avx2(const float *q, size_t heads, const uint16_t *keys,
                                     size_t n, size_t d, float scale, float *scores) {
  if (d % 8 != 0 || d > 256) {
    scores_f16_portable(q, heads, keys, n, d, scale, scores);
    return;
  }
  size_t chunks = d / 8;
  __m256 kv[32];
  for (size_t j = 0; j < n; j++) {
    const uint16_t *k = keys + j * d;
    if (j + 4 < n) _mm_prefetch((const char *)(keys + (j + 4) * d), _MM_HINT_T0);
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

HKV_AVX2 static void weighted_sum_dense_avx2(const uint16_t *values, size_t n, size_t d,
                                             const float *probs, size_t heads, float *out) {
  if (d % 8 != 0 || d > 256 || heads > 8) {
    weighted_sum_dense_portable(values, n, d, probs, heads, out);
    return;
  }
  size_t chunks = d / 8;
  // Accumulators for up to 8 heads x 256 dims live in a stack buffer, written back once.
  __m256 acc[8 * 32];
  for (size_t h = 0; h < heads; h++)
    for (size_t c = 0; c < chunks; c++) acc[h * 32 + c] = _mm256_loadu_ps(out + h * d + c * 8);
  for (size_t j = 0; j < n; j++) {
    const uint16_t *v = values + j * d;
    if (j + 4 < n) _mm_prefetch((const char *)(values + (j + 4) * d), _MM_HINT_T0);
    for (size_t c = 0; c < chunks; c++) {
      __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + c * 8)));
      for (size_t h = 0; h < heads; h++) {
        __m256 p = _mm256_set1_ps(probs[h * n + j]);
        acc[h * 32 + c] = _mm256_fmadd_ps(p, vv, acc[h * 32 + c]);
      }
    }
  }
  for (size_t h = 0; h < heads; h++)
    for (size_t c = 0; c < chunks; c++) _mm256_storeu_ps(out + h * d + c * 8, acc[h * 32 + c]);
}

HKV_AVX2 static void weighted_sum_sparse_avx2(const uint16_t *values, size_t d,
                                              const int32_t *idx, const float *w, size_t count,
                                              float *out) {
  if (d % 8 != 0 || d > 256) {
    weighted_sum_sparse_portable(values, d, idx, w, count, out);
    return;
  }
  size_t chunks = d / 8;
  __m256 acc[32];
  for (size_t c = 0; c < chunks; c++) acc[c] = _mm256_loadu_ps(out + c * 8);
  for (size_t k = 0; k < count; k++) {
    const uint16_t *v = values + (size_t)idx[k] * d;
    if (k + 8 < count) _mm_prefetch((const char *)(values + (size_t)idx[k + 8] * d), _MM_HINT_T0);
    __m256 p = _mm256_set1_ps(w[k]);
    for (size_t c = 0; c < chunks; c++) {
      __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + c * 8)));
      acc[c] = _mm256_fmadd_ps(p, vv, acc[c]);
    }
  }
  for (size_t c = 0; c < chunks; c++) _mm256_storeu_ps(out + c * 8, acc[c]);
}

// Four tokens at a time: each code selects a 16-byte entry holding the four heads' partial
// scores, so one load serves the whole query group; a 4x4 transpose writes head-major rows.
HKV_AVX2 static void pq_scores_x4_avx2(const float *lut, size_t g, size_t c,
                                       const uint16_t *codes, size_t n, float *scores) {
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const uint16_t *c0 = codes + j * g, *c1 = c0 + g, *c2 = c1 + g, *c3 = c2 + g;
    __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps(), a2 = _mm_setzero_ps(),
           a3 = _mm_setzero_ps();
    const float *base = lut;
    for (size_t i = 0; i < g; i++, base += c * 4) {
      a0 = _mm_add_ps(a0, _mm_loadu_ps(base + (size_t)c0[i] * 4));
      a1 = _mm_add_ps(a1, _mm_loadu_ps(base + (size_t)c1[i] * 4));
      a2 = _mm_add_ps(a2, _mm_loadu_ps(base + (size_t)c2[i] * 4));
      a3 = _mm_add_ps(a3, _mm_loadu_ps(base + (size_t)c3[i] * 4));
    }
    _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
    _mm_storeu_ps(scores + j, a0);
    _mm_storeu_ps(scores + n + j, a1);
    _mm_storeu_ps(scores + 2 * n + j, a2);
    _mm_storeu_ps(scores + 3 * n + j, a3);
  }
  // Tail of fewer than four tokens.
  for (size_t t = j; t < n; t++) {
    float a[4] = {0, 0, 0, 0};
    const uint16_t *ct = codes + t * g;
    for (size_t i = 0; i < g; i++)
      for (int h = 0; h < 4; h++) a[h] += lut[(i * c + ct[i]) * 4 + h];
    for (int h = 0; h < 4; h++) scores[h * n + t] = a[h];
  }
}

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
    for (size_t m = 0; m < c; m++) {
      const uint16_t *cm = ci + m * s;
      for (size_t t = 0; t < s; t++) tmp[t] = half_to_float(cm[t]);
      __m128 acc = _mm_mul_ps(_mm_set1_ps(tmp[0]), cols[0]);
      for (size_t t = 1; t < s; t++) acc = _mm_fmadd_ps(_mm_set1_ps(tmp[t]), cols[t], acc);
      _mm_storeu_ps(li + m * 4, acc);
    }
  }
}

HKV_AVX2 static void sq4_scores_avx2(const float *qs, const float *bias, size_t heads,
                                     const uint8_t *codes, size_t n, size_t d, float scale,
                                     float *scores, size_t stride) {
  if (d % 16 != 0 || d > 256) {
    sq4_scores_portable(qs, bias, heads, codes, n, d, scale, scores, stride);
    return;
  }
  size_t half = d / 2;
  size_t chunks = half / 8;  // 8 packed bytes -> 8 low and 8 high channels per chunk
  __m256 lo[16], hi[16];
  const __m256i mask = _mm256_set1_epi32(0x0F);
  for (size_t j = 0; j < n; j++) {
    const uint8_t *cj = codes + j * half;
    for (size_t b = 0; b < chunks; b++) {
      __m128i bytes = _mm_loadl_epi64((const __m128i *)(cj + b * 8));
      __m256i w = _mm256_cvtepu8_epi32(bytes);
      lo[b] = _mm256_cvtepi32_ps(_mm256_and_si256(w, mask));
      hi[b] = _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4));
    }
    for (size_t h = 0; h < heads; h++) {
      const float *qh = qs + h * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      for (size_t b = 0; b < chunks; b++) {
        a0 = _mm256_fmadd_ps(lo[b], _mm256_loadu_ps(qh + b * 8), a0);
        a1 = _mm256_fmadd_ps(hi[b], _mm256_loadu_ps(qh + half + b * 8), a1);
      }
      scores[h * stride + j] = (bias[h] + hsum256(_mm256_add_ps(a0, a1))) * scale;
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

HKV_AVX2 static void nearest_centroids_avx2(const float *points, size_t n, size_t stride,
                                            size_t s, const float *centroids,
                                            const float *norms, size_t c, uint16_t *codes,
                                            size_t code_stride) {
  if (c % 8 != 0 || s > 16) {
    nearest_centroids_portable(points, n, stride, s, centroids, norms, c, codes, code_stride);
    return;
  }
  __m256 xs[16];
  const __m256i step = _mm256_set1_epi32(8);
  for (size_t j = 0; j < n; j++) {
    const float *x = points + j * stride;
    for (size_t t = 0; t < s; t++) xs[t] = _mm256_set1_ps(-2.0f * x[t]);
    __m256 best = _mm256_set1_ps(INFINITY);
    __m256i bestIdx = _mm256_setzero_si256();
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (size_t m = 0; m < c; m += 8) {
      __m256 dist = _mm256_loadu_ps(norms + m);
      for (size_t t = 0; t < s; t++)
        dist = _mm256_fmadd_ps(xs[t], _mm256_loadu_ps(centroids + t * c + m), dist);
      __m256 lt = _mm256_cmp_ps(dist, best, _CMP_LT_OQ);
      best = _mm256_blendv_ps(best, dist, lt);
      bestIdx = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(bestIdx), _mm256_castsi256_ps(idx), lt));
      idx = _mm256_add_epi32(idx, step);
    }
    float bv[8];
    int32_t bi[8];
    _mm256_storeu_ps(bv, best);
    _mm256_storeu_si256((__m256i *)bi, bestIdx);
    float b = bv[0];
    int32_t a = bi[0];
    for (int t = 1; t < 8; t++)
      if (bv[t] < b || (bv[t] == b && bi[t] < a)) {
        b = bv[t];
        a = bi[t];
      }
    codes[j * code_stride] = (uint16_t)a;
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

void hkv_weighted_sum_sparse_f16(const uint16_t *values, size_t d, const int32_t *indices,
                                 const float *weights, size_t count, float *out) {
  DISPATCH(weighted_sum_sparse_avx2, weighted_sum_sparse_portable, values, d, indices, weights,
           count, out);
}

void hkv_pq_scores_x4(const float *lut, size_t g, size_t c, const uint16_t *codes, size_t n,
                      float *scores) {
  DISPATCH(pq_scores_x4_avx2, pq_scores_x4_portable, lut, g, c, codes, n, scores);
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

double hkv_scan_sum_f32(const float *x, size_t n) {
#ifdef HKV_X86
  if (hkv_kernels_vectorized()) return scan_sum_avx2(x, n);
#endif
  return scan_sum_portable(x, n);
}
