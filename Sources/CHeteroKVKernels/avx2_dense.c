// AVX2 + FMA + F16C kernels over fp16 rows: conversions, scores against fp16 keys and
// weighted sums of fp16 values. Compiled with a target attribute (no CPU-specific build
// flags) and chosen at run time by dispatch.c.

#include "kernels_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef HKV_X86

HKV_AVX2 HKV_INTERNAL void f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; i++) dst[i] = half_to_float(src[i]);
}

HKV_AVX2 HKV_INTERNAL void f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
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
// One fp16 key row (d a multiple of 8, at most 256) against every head's query:
// out[h * stride] = scale * q[h] . k. The row is converted once for all heads.
HKV_AVX2 static inline void score_row(const uint16_t *k, const float *q, size_t heads, size_t d,
                                      float scale, float *out, size_t stride) {
  size_t chunks = d / 8;
  __m256 kv[32];
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
    out[h * stride] = hsum256(_mm256_add_ps(a0, a1)) * scale;
  }
}

// Two key rows against up to four heads (d a multiple of 8): each 8-dim chunk of both rows is
// converted once and meets each head's query chunk, loaded once for the pair; the two rows'
// sums of a head reduce together and leave in one two-float store.
HKV_AVX2 static inline void score_pair_heads(const uint16_t *r0, const uint16_t *r1,
                                             const float *q, size_t heads, size_t d, float scale,
                                             float *out, size_t stride) {
  __m256 a0[4], a1[4];
  for (size_t h = 0; h < 4; h++) a0[h] = a1[h] = _mm256_setzero_ps();
  for (size_t c = 0; c < d; c += 8) {
    __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r0 + c)));
    __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r1 + c)));
    for (size_t h = 0; h < heads; h++) {
      __m256 qc = _mm256_loadu_ps(q + h * d + c);
      a0[h] = _mm256_fmadd_ps(x0, qc, a0[h]);
      a1[h] = _mm256_fmadd_ps(x1, qc, a1[h]);
    }
  }
  __m128 sc = _mm_set1_ps(scale);
  for (size_t h = 0; h < heads; h++) {
    __m256 s = _mm256_hadd_ps(a0[h], a1[h]);
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    t = _mm_hadd_ps(t, t);  // row 0, row 1, row 0, row 1
    _mm_storel_pi((__m64 *)(out + h * stride), _mm_mul_ps(t, sc));
  }
}

// Two key rows against every head, four heads at a time: out[h * stride + r] for rows r0, r1.
// A register block of two rows x four heads (8 accumulators, 2 rows, 1 query chunk) leaves
// no horizontal reduction or scalar store per row and head: twice the rows per second of
// score_row on the three-head groups of small models, measured on Zen 1.
HKV_AVX2 static inline void score_row_pair(const uint16_t *r0, const uint16_t *r1,
                                           const float *q, size_t heads, size_t d, float scale,
                                           float *out, size_t stride) {
  for (size_t h = 0; h < heads; h += 4) {
    // Constant head counts, so each block's loops unroll with its accumulators in registers.
    switch (heads - h < 4 ? heads - h : 4) {
      case 1: score_pair_heads(r0, r1, q + h * d, 1, d, scale, out + h * stride, stride); break;
      case 2: score_pair_heads(r0, r1, q + h * d, 2, d, scale, out + h * stride, stride); break;
      case 3: score_pair_heads(r0, r1, q + h * d, 3, d, scale, out + h * stride, stride); break;
      default: score_pair_heads(r0, r1, q + h * d, 4, d, scale, out + h * stride, stride); break;
    }
  }
}

HKV_AVX2 HKV_INTERNAL void scores_f16_avx2(const float *q, size_t heads, const uint16_t *keys,
                                     size_t n, size_t d, float scale, float *scores) {
  if (heads % 4 == 0 && d % 16 == 0) {
    for (size_t h = 0; h < heads; h += 4) scores_f16_x4_avx2(q + h * d, keys, n, d, scale, scores + h * n);
    return;
  }
  if (d % 8 != 0 || d > 256) {
    scores_f16_portable(q, heads, keys, n, d, scale, scores);
    return;
  }
  size_t j = 0;
  for (; j + 2 <= n; j += 2) {
    if (j + 18 <= n) prefetch_lines(keys + (j + 16) * d, 2 * d * 2);
    score_row_pair(keys + j * d, keys + (j + 1) * d, q, heads, d, scale, scores + j, n);
  }
  if (j < n) score_row(keys + j * d, q, heads, d, scale, scores + j, n);
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

HKV_AVX2 HKV_INTERNAL void weighted_sum_dense_avx2(const uint16_t *values, size_t n, size_t d,
                                             const float *probs, size_t heads, float *out) {
  if (d % 8 == 0 && heads <= 8) {
    weighted_sum_dense_blocked_avx2(values, n, d, probs, heads, out);
    return;
  }
  weighted_sum_dense_portable(values, n, d, probs, heads, out);
}

// Rows by index, four at a time, every head's weight applied to each row read once.
HKV_AVX2 HKV_INTERNAL void weighted_sum_sparse_multi_avx2(const uint16_t *values, size_t d,
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

// Scores over rows in place: the generic loop of scores_f16_avx2 with each row found through
// its pointer, the next rows prefetched (they are scattered over pages).
HKV_AVX2 HKV_INTERNAL void scores_f16_rows_avx2(const float *q, size_t heads,
                                                const uint16_t *const *rows, size_t n, size_t d,
                                                float scale, float *scores) {
  if (d % 8 != 0 || d > 256) {
    scores_f16_rows_portable(q, heads, rows, n, d, scale, scores);
    return;
  }
  size_t j = 0;
  for (; j + 2 <= n; j += 2) {
    if (j + 18 <= n) {
      prefetch_lines(rows[j + 16], d * 2);
      prefetch_lines(rows[j + 17], d * 2);
    }
    score_row_pair(rows[j], rows[j + 1], q, heads, d, scale, scores + j, n);
  }
  if (j < n) score_row(rows[j], q, heads, d, scale, scores + j, n);
}

// The weighted sum over rows in place, four rows at a time as the sparse kernel does it.
// out[h][col..<col+32] += Σ_j probs[h][j] * rows[j][col..<col+32] for up to three heads: the
// heads' accumulators for one cache line of fp16 (12 registers) stay in registers over every
// row, so no accumulator is loaded or stored per row, and each pass reads one line of a row.
HKV_AVX2 static inline void weighted_sum_rows_line(const uint16_t *const *rows, size_t n,
                                                   size_t col, const float *probs, size_t heads,
                                                   size_t d, float *out) {
  __m256 a[3][4];
  for (size_t h = 0; h < 3; h++)
    for (int k = 0; k < 4; k++) a[h][k] = _mm256_setzero_ps();
  for (size_t j = 0; j < n; j++) {
    if (j + 16 < n) _mm_prefetch((const char *)(rows[j + 16] + col), _MM_HINT_T0);
    const uint16_t *v = rows[j] + col;
    __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)v));
    __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8)));
    __m256 x2 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 16)));
    __m256 x3 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 24)));
    for (size_t h = 0; h < heads; h++) {
      __m256 p = _mm256_broadcast_ss(probs + h * n + j);
      a[h][0] = _mm256_fmadd_ps(p, x0, a[h][0]);
      a[h][1] = _mm256_fmadd_ps(p, x1, a[h][1]);
      a[h][2] = _mm256_fmadd_ps(p, x2, a[h][2]);
      a[h][3] = _mm256_fmadd_ps(p, x3, a[h][3]);
    }
  }
  for (size_t h = 0; h < heads; h++)
    for (int k = 0; k < 4; k++) {
      float *o = out + h * d + col + 8 * k;
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a[h][k]));
    }
}

HKV_AVX2 HKV_INTERNAL void weighted_sum_rows_avx2(const uint16_t *const *rows, size_t n, size_t d,
                                                  const float *probs, size_t heads, float *out) {
  if (d % 8 != 0 || heads > 8) {
    weighted_sum_rows_portable(rows, n, d, probs, heads, out);
    return;
  }
  // Up to three heads (a small model's GQA group), a cache line at a time with the sums in
  // registers: 1.2-1.5x the four-row blocks below on Zen 1, whose per-row accumulator loads
  // and stores cost more than the FMAs at that head count.
  if (heads >= 1 && heads <= 3 && d % 32 == 0) {
    for (size_t col = 0; col < d; col += 32) {
      switch (heads) {
        case 1: weighted_sum_rows_line(rows, n, col, probs, 1, d, out); break;
        case 2: weighted_sum_rows_line(rows, n, col, probs, 2, d, out); break;
        default: weighted_sum_rows_line(rows, n, col, probs, 3, d, out); break;
      }
    }
    return;
  }
  __m256 pb[8][4];
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    if (j + 12 <= n)
      for (int r = 8; r < 12; r++) prefetch_lines(rows[j + r], d * 2);
    const uint16_t *const v[4] = {rows[j], rows[j + 1], rows[j + 2], rows[j + 3]};
    for (size_t h = 0; h < heads; h++)
      for (int r = 0; r < 4; r++) pb[h][r] = _mm256_set1_ps(probs[h * n + j + r]);
    accumulate_four_rows(v, pb, heads, d, out);
  }
  for (; j < n; j++) {
    const uint16_t *v = rows[j];
    for (size_t h = 0; h < heads; h++) {
      float p = probs[h * n + j];
      for (size_t c = 0; c < d; c++) out[h * d + c] += p * half_to_float(v[c]);
    }
  }
}

#endif
