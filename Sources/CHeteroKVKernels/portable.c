// The portable C version of every kernel: what runs where the CPU lacks AVX2 + FMA + F16C,
// and the reference the vectorized versions are checked against.

#include "kernels_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

HKV_INTERNAL void f16_to_f32_portable(const uint16_t *src, float *dst, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

HKV_INTERNAL void f32_to_f16_portable(const float *src, uint16_t *dst, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}

HKV_INTERNAL void scores_f16_portable(const float *q, size_t heads, const uint16_t *keys, size_t n,
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

HKV_INTERNAL void weighted_sum_dense_portable(const uint16_t *values, size_t n, size_t d,
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

HKV_INTERNAL void weighted_sum_sparse_multi_portable(const uint16_t *values, size_t d,
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

HKV_INTERNAL void scores_f16_rows_portable(const float *q, size_t heads,
                                           const uint16_t *const *rows, size_t n, size_t d,
                                           float scale, float *scores) {
  for (size_t j = 0; j < n; j++) {
    const uint16_t *k = rows[j];
    for (size_t h = 0; h < heads; h++) {
      const float *qh = q + h * d;
      float acc = 0;
      for (size_t c = 0; c < d; c++) acc += qh[c] * half_to_float(k[c]);
      scores[h * n + j] = acc * scale;
    }
  }
}

HKV_INTERNAL void weighted_sum_rows_portable(const uint16_t *const *rows, size_t n, size_t d,
                                             const float *probs, size_t heads, float *out) {
  for (size_t j = 0; j < n; j++) {
    const uint16_t *v = rows[j];
    for (size_t h = 0; h < heads; h++) {
      float p = probs[h * n + j];
      if (p == 0) continue;
      for (size_t c = 0; c < d; c++) out[h * d + c] += p * half_to_float(v[c]);
    }
  }
}

// Generated for 16-bit codes and for 8-bit codes (codebooks of at most 256 centroids).
#define PQ_SCORES_X4_PORTABLE(NAME, CODE_T)                                                  \
  HKV_INTERNAL void NAME(const float *lut, size_t g, size_t c, const CODE_T *codes, size_t n,      \
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

HKV_INTERNAL void pq_lut_x4_portable(const uint16_t *centroids, size_t g, size_t c, size_t s,
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

// One token at a time: each byte holds a pair of sub-spaces' codes (hkv_pq4_code_offset).
HKV_INTERNAL void pq4_scores_portable(const uint8_t *lut, const float *lut_scale,
                                      const float *lut_bias, size_t heads, size_t g,
                                      const uint8_t *blocks, size_t n, float *scores,
                                      size_t stride) {
  size_t sub = hkv_pq4_subspaces(g), bytes = hkv_pq4_block_bytes(g);
  for (size_t j = 0; j < n; j++) {
    const uint8_t *block = blocks + j / HKV_PQ4_BLOCK * bytes;
    size_t k = j % HKV_PQ4_BLOCK, at = k < 16 ? 2 * k : 2 * (k - 16) + 1;
    for (size_t h = 0; h < heads; h++) {
      const uint8_t *lh = lut + h * sub * 16;
      uint32_t sum = 0;
      for (size_t p = 0; p < sub / 2; p++) {
        uint8_t b = block[p * 32 + at];
        sum += lh[2 * p * 16 + (b & 15)] + lh[(2 * p + 1) * 16 + (b >> 4)];
      }
      scores[h * stride + j] = fmaf(lut_scale[h], (float)sum, lut_bias[h]);
    }
  }
}

// A byte table from float entries ([g][stride], the first c of each row used): each sub-space's
// lowest entry, the widest range over 255 as the step, and each entry as its distance above its
// sub-space's lowest, in steps, rounded; entries past c are 0. Separate statements keep the
// arithmetic unfused on every target, so the AVX-512 builder can write the same bytes.
static void byte_table_from_entries(const float *entries, size_t g, size_t c, size_t stride,
                                    uint8_t *lut, float *lut_scale, float *lut_bias) {
  float low[256], step = 0, bias = 0;
  for (size_t i = 0; i < g; i++) {
    float lo = INFINITY, hi = -INFINITY;
    for (size_t m = 0; m < c; m++) {
      float e = entries[i * stride + m];
      lo = e < lo ? e : lo;
      hi = e > hi ? e : hi;
    }
    low[i] = lo;
    step = hi - lo > step ? hi - lo : step;
    bias += lo;
  }
  step /= 255.0f;
  float inv = step > 0 ? 1.0f / step : 0;
  for (size_t i = 0; i < g; i++) {
    for (size_t m = 0; m < stride; m++) {
      uint8_t byte = 0;
      if (m < c) {
        float v = (entries[i * stride + m] - low[i]) * inv;
        v = v + 0.5f;
        byte = (uint8_t)(v < 255.0f ? v : 255.0f);
      }
      lut[i * stride + m] = byte;
    }
  }
  *lut_scale = step;
  *lut_bias = bias;
}

void hkv_pq4_lut(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                 size_t heads, uint8_t *lut, float *lut_scale, float *lut_bias) {
  size_t sub = hkv_pq4_subspaces(g), d = g * s;
  float entry[256 * 16];
  if (g > 256 || c > 16) return;
  for (size_t h = 0; h < heads; h++) {
    for (size_t i = 0; i < g; i++) {
      for (size_t m = 0; m < c; m++) {
        const uint16_t *cm = centroids + (i * c + m) * s;
        float acc = 0;
        for (size_t t = 0; t < s; t++) acc += q[h * d + i * s + t] * half_to_float(cm[t]);
        entry[i * 16 + m] = acc;
      }
    }
    uint8_t *lh = lut + h * sub * 16;
    byte_table_from_entries(entry, g, c, 16, lh, lut_scale + h, lut_bias + h);
    memset(lh + g * 16, 0, (sub - g) * 16);
  }
}

void hkv_pq4_pack(const uint16_t *codes, size_t rows, size_t g, size_t first, uint8_t *blocks) {
  for (size_t t = 0; t < rows; t++)
    for (size_t i = 0; i < g; i++)
      blocks[hkv_pq4_code_offset(g, first + t, i)] |= (uint8_t)((codes[t * g + i] & 15)
                                                               << (i % 2 ? 4 : 0));
}

// One token at a time over its block's sub-space rows (hkv_pq8_code_offset).
HKV_INTERNAL void pq8_scores_portable(const uint8_t *lut, const float *lut_scale,
                                      const float *lut_bias, size_t heads, size_t g,
                                      const uint8_t *blocks, size_t n, float *scores,
                                      size_t stride) {
  for (size_t j = 0; j < n; j++) {
    const uint8_t *block = blocks + j / HKV_PQ8_BLOCK * hkv_pq8_block_bytes(g);
    size_t k = j % HKV_PQ8_BLOCK, at = k < 32 ? 2 * k : 2 * (k - 32) + 1;
    for (size_t h = 0; h < heads; h++) {
      const uint8_t *lh = lut + h * g * 256;
      uint32_t sum = 0;
      for (size_t i = 0; i < g; i++) sum += lh[i * 256 + block[i * 64 + at]];
      scores[h * stride + j] = fmaf(lut_scale[h], (float)sum, lut_bias[h]);
    }
  }
}

HKV_INTERNAL void pq8_lut_portable(const uint16_t *centroids, size_t g, size_t c, size_t s,
                                   const float *q, size_t heads, float *scratch, uint8_t *lut,
                                   float *lut_scale, float *lut_bias) {
  if (g > 256 || c > 256 || s == 0) return;
  size_t d = g * s;
  for (size_t h = 0; h < heads; h++) {
    for (size_t i = 0; i < g; i++) {
      const float *qi = q + h * d + i * s;
      for (size_t m = 0; m < c; m++) {
        const uint16_t *cm = centroids + (i * c + m) * s;
        float acc = qi[0] * half_to_float(cm[0]);
        for (size_t t = 1; t < s; t++) acc = fmaf(qi[t], half_to_float(cm[t]), acc);
        scratch[i * 256 + m] = acc;
      }
    }
    byte_table_from_entries(scratch, g, c, 256, lut + h * g * 256, lut_scale + h, lut_bias + h);
  }
}

void hkv_pq8_pack(const uint16_t *codes, size_t rows, size_t g, size_t first, uint8_t *blocks) {
  for (size_t t = 0; t < rows; t++)
    for (size_t i = 0; i < g; i++)
      blocks[hkv_pq8_code_offset(g, first + t, i)] = (uint8_t)codes[t * g + i];
}

HKV_INTERNAL void sq4_scores_portable(const float *qs, const float *bias, size_t heads,
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

HKV_INTERNAL float softmax_exp_portable(float *x, size_t n, float *max_out) {
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

HKV_INTERNAL float softmax_exp_chunked_portable(const float *x, size_t n, float *w,
                                                float *chunk_max, float *max_out) {
  float m = -INFINITY, z = 0;
  int non_finite = 0;
  for (size_t c0 = 0, c = 0; c0 < n; c0 += HKV_SELECT_CHUNK, c++) {
    size_t len = n - c0 < HKV_SELECT_CHUNK ? n - c0 : HKV_SELECT_CHUNK;
    const float *xc = x + c0;
    float *wc = w + c0;
    float cm = -INFINITY;
    for (size_t i = 0; i < len; i++) {
      non_finite |= xc[i] != xc[i];
      cm = xc[i] > cm ? xc[i] : cm;
    }
    if (cm > m) {
      z = m > -INFINITY ? z * expf(m - cm) : 0;
      m = cm;
    }
    chunk_max[c] = m;
    if (!(m > -INFINITY) || m == INFINITY) {
      for (size_t i = 0; i < len; i++) wc[i] = 0;
      continue;
    }
    float s = 0;
    for (size_t i = 0; i < len; i++) {
      wc[i] = expf(xc[i] - m);
      s += wc[i];
    }
    z += s;
  }
  *max_out = m;
  return non_finite || m == INFINITY ? NAN : z;
}

HKV_INTERNAL uint16_t group_mean_buckets_portable(const float *w, size_t heads, size_t n,
                                                  const float *coef, int32_t top_bucket,
                                                  float *mean, uint16_t *bucket) {
  uint16_t used = 0;
  for (size_t j = 0; j < n; j++) {
    uint16_t b = group_mean_bucket_at(w, heads, n, coef, top_bucket, j, mean, bucket);
    used = b > used ? b : used;
  }
  return used;
}

HKV_INTERNAL size_t keep_compress_portable(const uint16_t *bucket, size_t n, uint16_t boundary,
                                           float *w, size_t heads, const float *coef,
                                           int32_t *indices, float *kept_mass) {
  for (size_t h = 0; h < heads; h++) kept_mass[h] = 0;
  return keep_compress_from(bucket, n, 0, 0, boundary, w, heads, coef, indices, kept_mass);
}

HKV_INTERNAL void nearest_centroids_portable(const float *points, size_t n, size_t stride, size_t s,
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

HKV_INTERNAL void sq_scores_generic(const float *qs, const float *bias, size_t heads,
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

HKV_INTERNAL double scan_sum_portable(const float *x, size_t n) {
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
