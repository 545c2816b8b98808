// AVX-512 (F, BW, VBMI) kernels over codes: one-byte product-quantization codes scored from
// byte tables held in registers. Chosen at run time by dispatch.c, where the CPU has them.

#include "kernels_internal.h"

#include <string.h>

#ifdef HKV_X86

// One block of 64 tokens for `hn` (1-4, a constant where it is inlined) heads: per sub-space
// the 64 codes load once and their top bits pick a table half; each head's 256-entry table is
// four registers, and two two-register byte permutes (the low seven bits of each code) look up
// all 64 tokens. Byte sums accumulate in 16-bit lanes as in the 4-bit fast scan: `all` adds
// both bytes of a lane, `odd` the high bytes alone, so the even bytes' sums are all - 256 * odd,
// exact for up to 256 sub-spaces.
HKV_AVX512 static inline __attribute__((always_inline)) void
pq8_block_avx512(const uint8_t *lut, size_t g, size_t h0, const int hn, const uint8_t *block,
                 __m512i *all, __m512i *odd) {
  for (int k = 0; k < hn; k++) all[k] = odd[k] = _mm512_setzero_si512();
  for (size_t i = 0; i < g; i++) {
    __m512i c = _mm512_loadu_si512((const void *)(block + i * 64));
    __mmask64 high = _mm512_movepi8_mask(c);
    for (int k = 0; k < hn; k++) {
      const uint8_t *t = lut + ((h0 + (size_t)k) * g + i) * 256;
      __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)t), c,
                                            _mm512_loadu_si512((const void *)(t + 64)));
      __m512i hi = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)(t + 128)), c,
                                            _mm512_loadu_si512((const void *)(t + 192)));
      __m512i r = _mm512_mask_blend_epi8(high, lo, hi);
      all[k] = _mm512_add_epi16(all[k], r);
      odd[k] = _mm512_add_epi16(odd[k], _mm512_srli_epi16(r, 8));
    }
  }
}

// Tokens 0-31 of a block are the even bytes' sums, 32-63 the odd ones', each in order.
HKV_AVX512 static inline void pq8_store_avx512(__m512i all, __m512i odd, float scale, float bias,
                                               float *out) {
  __m512i even = _mm512_sub_epi16(all, _mm512_slli_epi16(odd, 8));
  __m512 sc = _mm512_set1_ps(scale), bi = _mm512_set1_ps(bias);
  __m512i parts[4] = {
      _mm512_cvtepu16_epi32(_mm512_castsi512_si256(even)),
      _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(even, 1)),
      _mm512_cvtepu16_epi32(_mm512_castsi512_si256(odd)),
      _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(odd, 1)),
  };
  for (int q = 0; q < 4; q++)
    _mm512_storeu_ps(out + 16 * q, _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(parts[q]), bi));
}

HKV_AVX512 HKV_INTERNAL void pq8_scores_avx512(const uint8_t *lut, const float *lut_scale,
                                               const float *lut_bias, size_t heads, size_t g,
                                               const uint8_t *blocks, size_t n, float *scores,
                                               size_t stride) {
  size_t bytes = hkv_pq8_block_bytes(g);
  float tail[HKV_PQ8_BLOCK];
  for (size_t j = 0; j < n; j += HKV_PQ8_BLOCK) {
    const uint8_t *block = blocks + j / HKV_PQ8_BLOCK * bytes;
    size_t valid = n - j < HKV_PQ8_BLOCK ? n - j : HKV_PQ8_BLOCK;
    for (size_t h0 = 0; h0 < heads; h0 += 4) {
      __m512i all[4], odd[4];
      int hn = heads - h0 < 4 ? (int)(heads - h0) : 4;
      switch (hn) {
      case 4: pq8_block_avx512(lut, g, h0, 4, block, all, odd); break;
      case 3: pq8_block_avx512(lut, g, h0, 3, block, all, odd); break;
      case 2: pq8_block_avx512(lut, g, h0, 2, block, all, odd); break;
      default: pq8_block_avx512(lut, g, h0, 1, block, all, odd); break;
      }
      for (int k = 0; k < hn; k++) {
        size_t h = h0 + (size_t)k;
        float *out = scores + h * stride + j;
        if (valid == HKV_PQ8_BLOCK) {
          pq8_store_avx512(all[k], odd[k], lut_scale[h], lut_bias[h], out);
        } else {
          pq8_store_avx512(all[k], odd[k], lut_scale[h], lut_bias[h], tail);
          memcpy(out, tail, sizeof(float) * valid);
        }
      }
    }
  }
}

// The float entries of up to four heads, 16 centroids at a time: the centroids' fp16
// coordinates convert once and split by coordinate (two levels of permutes for s = 4), and each
// head's entries are q_0 x_0 then fused multiply-adds, the portable builder's arithmetic. Then
// per head the bytes, 16 a store. Other shapes (s not 2 or 4, c not a multiple of 16) take the
// portable builder.
HKV_AVX512 HKV_INTERNAL void pq8_lut_avx512(const uint16_t *centroids, size_t g, size_t c,
                                            size_t s, const float *q, size_t heads,
                                            float *scratch, uint8_t *lut, float *lut_scale,
                                            float *lut_bias) {
  if (g > 256 || c > 256) return;
  if ((s != 2 && s != 4) || c % 16 != 0) {
    pq8_lut_portable(centroids, g, c, s, q, heads, scratch, lut, lut_scale, lut_bias);
    return;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i oddi = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  size_t d = g * s;
  float low[4][256];
  for (size_t h0 = 0; h0 < heads; h0 += 4) {
    size_t hn = heads - h0 < 4 ? heads - h0 : 4;
    float step[4] = {0, 0, 0, 0}, bias[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < g; i++) {
      __m512 qv[4][4], lo[4], hi[4];
      for (size_t k = 0; k < hn; k++) {
        for (size_t t = 0; t < s; t++) qv[k][t] = _mm512_set1_ps(q[(h0 + k) * d + i * s + t]);
        lo[k] = _mm512_set1_ps(INFINITY);
        hi[k] = _mm512_set1_ps(-INFINITY);
      }
      const uint16_t *ci = centroids + i * c * s;
      for (size_t m = 0; m < c; m += 16) {
        __m512 co[4];
        const uint16_t *cm = ci + m * s;
        __m512 v0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)cm));
        __m512 v1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(cm + 16)));
        if (s == 2) {
          co[0] = _mm512_permutex2var_ps(v0, even, v1);
          co[1] = _mm512_permutex2var_ps(v0, oddi, v1);
        } else {
          __m512 v2 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(cm + 32)));
          __m512 v3 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(cm + 48)));
          __m512 p = _mm512_permutex2var_ps(v0, even, v1), qq = _mm512_permutex2var_ps(v0, oddi, v1);
          __m512 r = _mm512_permutex2var_ps(v2, even, v3), t = _mm512_permutex2var_ps(v2, oddi, v3);
          co[0] = _mm512_permutex2var_ps(p, even, r);
          co[2] = _mm512_permutex2var_ps(p, oddi, r);
          co[1] = _mm512_permutex2var_ps(qq, even, t);
          co[3] = _mm512_permutex2var_ps(qq, oddi, t);
        }
        for (size_t k = 0; k < hn; k++) {
          __m512 e = _mm512_mul_ps(qv[k][0], co[0]);
          for (size_t t = 1; t < s; t++) e = _mm512_fmadd_ps(qv[k][t], co[t], e);
          _mm512_storeu_ps(scratch + (k * g + i) * 256 + m, e);
          lo[k] = _mm512_min_ps(lo[k], e);
          hi[k] = _mm512_max_ps(hi[k], e);
        }
      }
      for (size_t k = 0; k < hn; k++) {
        float l = _mm512_reduce_min_ps(lo[k]), u = _mm512_reduce_max_ps(hi[k]);
        low[k][i] = l;
        step[k] = u - l > step[k] ? u - l : step[k];
        bias[k] += l;
      }
    }
    for (size_t k = 0; k < hn; k++) {
      float st = step[k] / 255.0f;
      float inv = st > 0 ? 1.0f / st : 0;
      __m512 vi = _mm512_set1_ps(inv), half = _mm512_set1_ps(0.5f), top = _mm512_set1_ps(255.0f);
      uint8_t *lh = lut + (h0 + k) * g * 256;
      for (size_t i = 0; i < g; i++) {
        const float *e = scratch + (k * g + i) * 256;
        __m512 l = _mm512_set1_ps(low[k][i]);
        for (size_t m = 0; m < c; m += 16) {
          __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(e + m), l), vi);
          v = _mm512_min_ps(_mm512_add_ps(v, half), top);
          _mm_storeu_si128((__m128i *)(lh + i * 256 + m),
                           _mm512_cvtusepi32_epi8(_mm512_cvttps_epu32(v)));
        }
        if (c < 256) memset(lh + i * 256 + c, 0, 256 - c);
      }
      lut_scale[h0 + k] = st;
      lut_bias[h0 + k] = bias[k];
    }
  }
}

#endif
