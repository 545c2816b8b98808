// AVX2 + FMA + F16C kernels over codes: product-quantization lookups, scalar 4-bit scores,
// softmax exponentials, nearest centroids and the bandwidth scan. Chosen at run time by
// dispatch.c.

#include "kernels_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef HKV_X86

// Eight tokens at a time: each code selects a 16-byte entry holding the four heads' partial
// scores, so one load serves the whole query group; eight independent accumulators hide the
// add latency, and two 4x4 transposes write head-major rows.
// Four codes per load (64 bits of 16-bit codes, 32 bits of 8-bit codes); the shifts run on
// the ALUs, not the load ports. WORD_T is the load, BITS the code width.
#define PQ_SCORES_X4_AVX2(NAME, CODE_T, WORD_T, BITS)                                        \
  HKV_AVX2 HKV_INTERNAL void NAME(const float *lut, size_t g, size_t c, const CODE_T *codes,       \
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

// Fast scan over one block of 32 tokens for `hn` (1-4, a constant where it is inlined) heads:
// per pair of sub-spaces the codes split into low and high nibbles once, and each head's two
// 16-entry tables (`wide`: each copied to both 128-bit lanes, so the shuffle reads it straight
// from L1) look up all 32 tokens with one byte shuffle each. Byte sums accumulate in 16-bit
// lanes: `all` adds both bytes of a lane (the even token wraps into the odd one's half), `odd`
// the high bytes alone, so the even tokens are all - 256 * odd, exact for up to 256 sub-spaces.
HKV_AVX2 static inline __attribute__((always_inline)) void
pq4_block_avx2(const uint8_t *wide, size_t sub, size_t h0, const int hn, const uint8_t *block,
               size_t pairs, __m256i *all, __m256i *odd) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int k = 0; k < hn; k++) all[k] = odd[k] = _mm256_setzero_si256();
  for (size_t p = 0; p < pairs; p++) {
    __m256i c = _mm256_loadu_si256((const __m256i *)(block + p * 32));
    __m256i lo = _mm256_and_si256(c, low4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), low4);
    for (int k = 0; k < hn; k++) {
      const __m256i *l = (const __m256i *)(wide + ((h0 + (size_t)k) * sub + 2 * p) * 32);
      __m256i r0 = _mm256_shuffle_epi8(_mm256_load_si256(l), lo);
      __m256i r1 = _mm256_shuffle_epi8(_mm256_load_si256(l + 1), hi);
      all[k] = _mm256_add_epi16(all[k], _mm256_add_epi16(r0, r1));
      odd[k] = _mm256_add_epi16(
          odd[k], _mm256_add_epi16(_mm256_srli_epi16(r0, 8), _mm256_srli_epi16(r1, 8)));
    }
  }
}

// Tokens 0-15 of a block are the even bytes' sums, 16-31 the odd ones', each in order.
HKV_AVX2 static inline void pq4_store_avx2(__m256i all, __m256i odd, float scale, float bias,
                                           float *out) {
  __m256i even = _mm256_sub_epi16(all, _mm256_slli_epi16(odd, 8));
  __m256 sc = _mm256_set1_ps(scale), bi = _mm256_set1_ps(bias);
  __m256i parts[4] = {
      _mm256_cvtepu16_epi32(_mm256_castsi256_si128(even)),
      _mm256_cvtepu16_epi32(_mm256_extracti128_si256(even, 1)),
      _mm256_cvtepu16_epi32(_mm256_castsi256_si128(odd)),
      _mm256_cvtepu16_epi32(_mm256_extracti128_si256(odd, 1)),
  };
  for (int q = 0; q < 4; q++)
    _mm256_storeu_ps(out + 8 * q, _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(parts[q]), bi));
}

HKV_AVX2 HKV_INTERNAL void pq4_scores_avx2(const uint8_t *lut, const float *lut_scale,
                                           const float *lut_bias, size_t heads, size_t g,
                                           const uint8_t *blocks, size_t n, float *scores,
                                           size_t stride) {
  size_t sub = hkv_pq4_subspaces(g), pairs = sub / 2, bytes = hkv_pq4_block_bytes(g);
  float tail[HKV_PQ4_BLOCK];
  // The tables widened to 32 bytes, on the stack for up to 16 heads of 128 dims.
  _Alignas(32) uint8_t local[16384];
  size_t need = heads * sub * 32;
  uint8_t *wide = need <= sizeof local ? local : aligned_alloc(32, (need + 31) & ~(size_t)31);
  if (!wide) {
    pq4_scores_portable(lut, lut_scale, lut_bias, heads, g, blocks, n, scores, stride);
    return;
  }
  for (size_t e = 0; e < heads * sub; e++) {
    __m128i t = _mm_loadu_si128((const __m128i *)(lut + e * 16));
    _mm256_store_si256((__m256i *)(wide + e * 32), _mm256_broadcastsi128_si256(t));
  }
  for (size_t j = 0; j < n; j += HKV_PQ4_BLOCK) {
    const uint8_t *block = blocks + j / HKV_PQ4_BLOCK * bytes;
    if (j + 3 * HKV_PQ4_BLOCK <= n) prefetch_lines(block + 2 * bytes, bytes);
    size_t valid = n - j < HKV_PQ4_BLOCK ? n - j : HKV_PQ4_BLOCK;
    for (size_t h0 = 0; h0 < heads; h0 += 4) {
      __m256i all[4], odd[4];
      int hn = heads - h0 < 4 ? (int)(heads - h0) : 4;
      switch (hn) {
      case 4: pq4_block_avx2(wide, sub, h0, 4, block, pairs, all, odd); break;
      case 3: pq4_block_avx2(wide, sub, h0, 3, block, pairs, all, odd); break;
      case 2: pq4_block_avx2(wide, sub, h0, 2, block, pairs, all, odd); break;
      default: pq4_block_avx2(wide, sub, h0, 1, block, pairs, all, odd); break;
      }
      for (int k = 0; k < hn; k++) {
        size_t h = h0 + (size_t)k;
        float *out = scores + h * stride + j;
        if (valid == HKV_PQ4_BLOCK) {
          pq4_store_avx2(all[k], odd[k], lut_scale[h], lut_bias[h], out);
        } else {
          pq4_store_avx2(all[k], odd[k], lut_scale[h], lut_bias[h], tail);
          memcpy(out, tail, sizeof(float) * valid);
        }
      }
    }
  }
  if (wide != local) free(wide);
}

// Per sub-space, the four heads' query slices form s column vectors of 4 lanes; each centroid
// entry is the sum over its s coordinates of coordinate x column.
HKV_AVX2 HKV_INTERNAL void pq_lut_x4_avx2(const uint16_t *centroids, size_t g, size_t c, size_t s,
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
HKV_AVX2 HKV_INTERNAL void sq4_scores_avx2(const float *qs, const float *bias, size_t heads,
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

// exp(x) for x <= 0: x = k ln2 + r with |r| <= ln2/2, e^r by a degree-5 polynomial (1 at 0;
// near-minimax in relative error, 9e-8), 2^k added to its exponent bits. k comes rounded from adding
// 1.5 * 2^23, whose low mantissa bits then hold it. Relative error about 2e-7; inputs below -87
// flush to 0 (above it, r is positive where k reaches -126, so the result stays normal).
HKV_AVX2 static inline __m256 exp256_nonpositive(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f), magic = _mm256_set1_ps(12582912.0f);
  __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  __m256 k = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(8.2903145291e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1897929387e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6667636198e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.9999149530e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.9999970719e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i scaled =
      _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(t), 23));
  return _mm256_andnot_ps(under, _mm256_castsi256_ps(scaled));
}

HKV_AVX2 static inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// w[i] = exp(x[i] - m) for i < n (w may be x), and their sum: the softmax numerators.
HKV_AVX2 static inline float exp_shifted_sum(const float *x, size_t n, float m, float *w) {
  __m256 bm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp256_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), bm));
    _mm256_storeu_ps(w + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float s = hsum256(acc);
  for (; i < n; i++) {
    w[i] = expf(x[i] - m);
    s += w[i];
  }
  return s;
}

HKV_AVX2 HKV_INTERNAL float softmax_exp_avx2(float *x, size_t n, float *max_out) {
  __m256 vm = _mm256_set1_ps(-INFINITY);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
  float m = hmax256(vm);
  for (; i < n; i++)
    if (x[i] > m) m = x[i];
  *max_out = m;
  if (!(m > -INFINITY)) return 0;
  return exp_shifted_sum(x, n, m, x);
}

// A chunk's maximum is taken from memory, then its exps from L1: one pass over x, where a max
// pass and an exp pass read it twice. A NaN anywhere is remembered (the max instruction would
// drop it) so that the sum reports it.
HKV_AVX2 HKV_INTERNAL float softmax_exp_chunked_avx2(const float *x, size_t n, float *w,
                                                     float *chunk_max, float *max_out) {
  float m = -INFINITY, z = 0;
  __m256 unordered = _mm256_setzero_ps();
  int non_finite = 0;
  for (size_t c0 = 0, c = 0; c0 < n; c0 += HKV_SELECT_CHUNK, c++) {
    size_t len = n - c0 < HKV_SELECT_CHUNK ? n - c0 : HKV_SELECT_CHUNK;
    const float *xc = x + c0;
    float *wc = w + c0;
    __m256 vm = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
      __m256 v = _mm256_loadu_ps(xc + i);
      unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      vm = _mm256_max_ps(vm, v);
    }
    float cm = hmax256(vm);
    for (; i < len; i++) {
      non_finite |= xc[i] != xc[i];
      cm = xc[i] > cm ? xc[i] : cm;
    }
    if (cm > m) {
      z = m > -INFINITY ? z * expf(m - cm) : 0;
      m = cm;
    }
    chunk_max[c] = m;
    if (!(m > -INFINITY) || m == INFINITY) {
      memset(wc, 0, sizeof(float) * len);
      continue;
    }
    z += exp_shifted_sum(xc, len, m, wc);
  }
  *max_out = m;
  non_finite |= _mm256_movemask_ps(unordered) != 0;
  return non_finite || m == INFINITY ? NAN : z;
}

HKV_AVX2 HKV_INTERNAL uint16_t group_mean_buckets_avx2(const float *w, size_t heads, size_t n,
                                                       const float *coef, int32_t top_bucket,
                                                       float *mean, uint16_t *bucket) {
  size_t chunks = (n + HKV_SELECT_CHUNK - 1) / HKV_SELECT_CHUNK;
  const __m256i top = _mm256_set1_epi32(top_bucket), last = _mm256_set1_epi32(4095);
  __m256i used = _mm256_setzero_si256();
  size_t j = 0;
  for (size_t c = 0; c < chunks; c++) {
    size_t end = (c + 1) * HKV_SELECT_CHUNK < n ? (c + 1) * HKV_SELECT_CHUNK : n;
    for (; j + 8 <= end; j += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (size_t h = 0; h < heads; h++)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + h * n + j),
                              _mm256_broadcast_ss(coef + h * chunks + c), acc);
      _mm256_storeu_ps(mean + j, acc);
      __m256i gap = _mm256_sub_epi32(top, _mm256_srli_epi32(_mm256_castps_si256(acc), 17));
      gap = _mm256_min_epi32(_mm256_max_epi32(gap, _mm256_setzero_si256()), last);
      used = _mm256_max_epi32(used, gap);
      __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(gap),
                                        _mm256_extracti128_si256(gap, 1));
      _mm_storeu_si128((__m128i *)(bucket + j), packed);
    }
    // The chunk's (or the context's) last tokens, one at a time, as the portable kernel does.
    for (; j < end; j++) {
      uint16_t b = group_mean_bucket_at(w, heads, n, coef, top_bucket, j, mean, bucket);
      used = _mm256_max_epi32(used, _mm256_set1_epi32(b));
    }
  }
  int32_t lanes[8];
  _mm256_storeu_si256((__m256i *)lanes, used);
  int32_t most = 0;
  for (int k = 0; k < 8; k++) most = lanes[k] > most ? lanes[k] : most;
  return (uint16_t)most;
}

// For each 8-bit mask, the lanes of its set bits in order, 3 bits each from bit 0: the
// permutation that packs a vector's selected lanes to its front.
static const uint32_t compress_lanes[256] = {
    0x000000, 0x000000, 0x000001, 0x000008, 0x000002, 0x000010, 0x000011, 0x000088,
    0x000003, 0x000018, 0x000019, 0x0000c8, 0x00001a, 0x0000d0, 0x0000d1, 0x000688,
    0x000004, 0x000020, 0x000021, 0x000108, 0x000022, 0x000110, 0x000111, 0x000888,
    0x000023, 0x000118, 0x000119, 0x0008c8, 0x00011a, 0x0008d0, 0x0008d1, 0x004688,
    0x000005, 0x000028, 0x000029, 0x000148, 0x00002a, 0x000150, 0x000151, 0x000a88,
    0x00002b, 0x000158, 0x000159, 0x000ac8, 0x00015a, 0x000ad0, 0x000ad1, 0x005688,
    0x00002c, 0x000160, 0x000161, 0x000b08, 0x000162, 0x000b10, 0x000b11, 0x005888,
    0x000163, 0x000b18, 0x000b19, 0x0058c8, 0x000b1a, 0x0058d0, 0x0058d1, 0x02c688,
    0x000006, 0x000030, 0x000031, 0x000188, 0x000032, 0x000190, 0x000191, 0x000c88,
    0x000033, 0x000198, 0x000199, 0x000cc8, 0x00019a, 0x000cd0, 0x000cd1, 0x006688,
    0x000034, 0x0001a0, 0x0001a1, 0x000d08, 0x0001a2, 0x000d10, 0x000d11, 0x006888,
    0x0001a3, 0x000d18, 0x000d19, 0x0068c8, 0x000d1a, 0x0068d0, 0x0068d1, 0x034688,
    0x000035, 0x0001a8, 0x0001a9, 0x000d48, 0x0001aa, 0x000d50, 0x000d51, 0x006a88,
    0x0001ab, 0x000d58, 0x000d59, 0x006ac8, 0x000d5a, 0x006ad0, 0x006ad1, 0x035688,
    0x0001ac, 0x000d60, 0x000d61, 0x006b08, 0x000d62, 0x006b10, 0x006b11, 0x035888,
    0x000d63, 0x006b18, 0x006b19, 0x0358c8, 0x006b1a, 0x0358d0, 0x0358d1, 0x1ac688,
    0x000007, 0x000038, 0x000039, 0x0001c8, 0x00003a, 0x0001d0, 0x0001d1, 0x000e88,
    0x00003b, 0x0001d8, 0x0001d9, 0x000ec8, 0x0001da, 0x000ed0, 0x000ed1, 0x007688,
    0x00003c, 0x0001e0, 0x0001e1, 0x000f08, 0x0001e2, 0x000f10, 0x000f11, 0x007888,
    0x0001e3, 0x000f18, 0x000f19, 0x0078c8, 0x000f1a, 0x0078d0, 0x0078d1, 0x03c688,
    0x00003d, 0x0001e8, 0x0001e9, 0x000f48, 0x0001ea, 0x000f50, 0x000f51, 0x007a88,
    0x0001eb, 0x000f58, 0x000f59, 0x007ac8, 0x000f5a, 0x007ad0, 0x007ad1, 0x03d688,
    0x0001ec, 0x000f60, 0x000f61, 0x007b08, 0x000f62, 0x007b10, 0x007b11, 0x03d888,
    0x000f63, 0x007b18, 0x007b19, 0x03d8c8, 0x007b1a, 0x03d8d0, 0x03d8d1, 0x1ec688,
    0x00003e, 0x0001f0, 0x0001f1, 0x000f88, 0x0001f2, 0x000f90, 0x000f91, 0x007c88,
    0x0001f3, 0x000f98, 0x000f99, 0x007cc8, 0x000f9a, 0x007cd0, 0x007cd1, 0x03e688,
    0x0001f4, 0x000fa0, 0x000fa1, 0x007d08, 0x000fa2, 0x007d10, 0x007d11, 0x03e888,
    0x000fa3, 0x007d18, 0x007d19, 0x03e8c8, 0x007d1a, 0x03e8d0, 0x03e8d1, 0x1f4688,
    0x0001f5, 0x000fa8, 0x000fa9, 0x007d48, 0x000faa, 0x007d50, 0x007d51, 0x03ea88,
    0x000fab, 0x007d58, 0x007d59, 0x03eac8, 0x007d5a, 0x03ead0, 0x03ead1, 0x1f5688,
    0x000fac, 0x007d60, 0x007d61, 0x03eb08, 0x007d62, 0x03eb10, 0x03eb11, 0x1f5888,
    0x007d63, 0x03eb18, 0x03eb19, 0x1f58c8, 0x03eb1a, 0x1f58d0, 0x1f58d1, 0xfac688,
};

HKV_AVX2 HKV_INTERNAL size_t keep_compress_avx2(const uint16_t *bucket, size_t n, uint16_t boundary,
                                                float *w, size_t heads, const float *coef,
                                                int32_t *indices, float *kept_mass) {
  if (heads > 64) return keep_compress_portable(bucket, n, boundary, w, heads, coef, indices,
                                                kept_mass);
  size_t chunks = (n + HKV_SELECT_CHUNK - 1) / HKV_SELECT_CHUNK;
  __m256 mass[64];
  for (size_t h = 0; h < heads; h++) mass[h] = _mm256_setzero_ps();
  const __m256i below = _mm256_set1_epi32(boundary), taken = _mm256_set1_epi32(HKV_TAU_TAKEN);
  const __m256i shifts = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  size_t kept = 0, j = 0;
  // Eight tokens a step: their selected lanes packed to the front of a vector and stored at the
  // kept count (the store writes 8 lanes, at most up to the tokens being read: in place is safe).
  for (; j + 8 <= n; j += 8) {
    __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(bucket + j)));
    __m256i keep = _mm256_or_si256(_mm256_cmpgt_epi32(below, b), _mm256_cmpeq_epi32(b, taken));
    int mask = _mm256_movemask_ps(_mm256_castsi256_ps(keep));
    // Most groups of eight keep none at long contexts (and a dense set keeps some in most).
    if (mask == 0) continue;
    __m256i perm = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32((int)compress_lanes[mask]), shifts),
        _mm256_set1_epi32(7));
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)j), lanes);
    _mm256_storeu_si256((__m256i *)(indices + kept), _mm256_permutevar8x32_epi32(idx, perm));
    size_t c = j / HKV_SELECT_CHUNK;
    for (size_t h = 0; h < heads; h++) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(w + h * n + j),
                               _mm256_broadcast_ss(coef + h * chunks + c));
      mass[h] = _mm256_add_ps(mass[h], _mm256_and_ps(v, _mm256_castsi256_ps(keep)));
      _mm256_storeu_ps(w + h * n + kept, _mm256_permutevar8x32_ps(v, perm));
    }
    kept += (size_t)__builtin_popcount((unsigned)mask);
  }
  for (size_t h = 0; h < heads; h++) kept_mass[h] = hsum256(mass[h]);
  return keep_compress_from(bucket, n, j, kept, boundary, w, heads, coef, indices, kept_mass);
}

// Four points per pass over the centroids, so each centroid load serves four distance
// computations; per lane the running minimum and its index.
HKV_AVX2 HKV_INTERNAL void nearest_centroids_avx2(const float *points, size_t n, size_t stride,
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
    // The lane of least distance, ties to the lower index, without branches: with 16 or 32
    // centroids a point's scalar search of its 8 lanes cost more than its distances.
    for (size_t p = 0; p < count; p++) {
      __m256 m = _mm256_min_ps(best[p], _mm256_permute_ps(best[p], 0xB1));
      m = _mm256_min_ps(m, _mm256_permute_ps(m, 0x4E));
      m = _mm256_min_ps(m, _mm256_permute2f128_ps(m, m, 1));
      __m256i tie = _mm256_castps_si256(_mm256_cmp_ps(best[p], m, _CMP_EQ_OQ));
      __m256i at = _mm256_blendv_epi8(_mm256_set1_epi32(INT32_MAX), bestIdx[p], tie);
      __m128i a = _mm_min_epi32(_mm256_castsi256_si128(at), _mm256_extracti128_si256(at, 1));
      a = _mm_min_epi32(a, _mm_shuffle_epi32(a, 0x4E));
      a = _mm_min_epi32(a, _mm_shuffle_epi32(a, 0xB1));
      codes[(j0 + p) * code_stride] = (uint16_t)_mm_cvtsi128_si32(a);
    }
  }
}

// Nearest centroid of each point for a two-dim sub-space whose codebook is stored as fp16
// pairs [c][2] (c % 8 == 0), as a decode step codes its one key a head: the distances of
// nearest_centroids_avx2 (|c|^2 first, then fma(-2 x_t, c_t), ties to the lower index) read
// straight from the codebook, where that kernel needs a float structure-of-arrays table and
// norms built first, which cost a lone key five times its distances.
HKV_AVX2 HKV_INTERNAL void nearest_centroids_f16_pairs_avx2(const float *points, size_t n,
                                                      size_t stride, const uint16_t *centroids,
                                                      size_t c, uint16_t *codes,
                                                      size_t code_stride) {
  // After the deinterleave below, lane l of a block of eight holds centroid m + order[l].
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  for (size_t j = 0; j < n; j++) {
    const float *x = points + j * stride;
    const __m256 x0 = _mm256_set1_ps(-2.0f * x[0]), x1 = _mm256_set1_ps(-2.0f * x[1]);
    __m256 best = _mm256_set1_ps(INFINITY);
    __m256i bestIdx = _mm256_setzero_si256();
    __m256i idx = order;
    for (size_t m = 0; m < c; m += 8) {
      // lo: c0x c0y c1x c1y | c2x c2y c3x c3y; hi: the same of c4..c7.
      __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(centroids + 2 * m)));
      __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(centroids + 2 * m + 8)));
      __m256 cx = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
      __m256 cy = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
      // The norm as the table builder sums it: x^2, then + y^2, each rounded.
      __m256 dist = _mm256_add_ps(_mm256_mul_ps(cx, cx), _mm256_mul_ps(cy, cy));
      dist = _mm256_fmadd_ps(x0, cx, dist);
      dist = _mm256_fmadd_ps(x1, cy, dist);
      __m256 lt = _mm256_cmp_ps(dist, best, _CMP_LT_OQ);
      best = _mm256_min_ps(dist, best);
      bestIdx = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(bestIdx), _mm256_castsi256_ps(idx), lt));
      idx = _mm256_add_epi32(idx, step);
    }
    __m256 least = _mm256_min_ps(best, _mm256_permute_ps(best, 0xB1));
    least = _mm256_min_ps(least, _mm256_permute_ps(least, 0x4E));
    least = _mm256_min_ps(least, _mm256_permute2f128_ps(least, least, 1));
    __m256i tie = _mm256_castps_si256(_mm256_cmp_ps(best, least, _CMP_EQ_OQ));
    __m256i at = _mm256_blendv_epi8(_mm256_set1_epi32(INT32_MAX), bestIdx, tie);
    __m128i a = _mm_min_epi32(_mm256_castsi256_si128(at), _mm256_extracti128_si256(at, 1));
    a = _mm_min_epi32(a, _mm_shuffle_epi32(a, 0x4E));
    a = _mm_min_epi32(a, _mm_shuffle_epi32(a, 0xB1));
    codes[j * code_stride] = (uint16_t)_mm_cvtsi128_si32(a);
  }
}

// Folds one group's fp16 scales and zero points into the query (qs = q * s, bias = q . z)
// and quantizes each head's folded query to int16 with a per-head step alpha. d % 16 == 0.
HKV_AVX2 HKV_INTERNAL void fold_group_i16_avx2(const float *q, size_t heads, size_t d,
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
HKV_AVX2 HKV_INTERNAL void sq4_scores_i16_avx2(const int16_t *q16, const float *alpha,
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

HKV_AVX2 HKV_INTERNAL double scan_sum_avx2(const float *x, size_t n) {
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
