// Dense f32 matrix products for the model's forward pass: y[t][r] = sum_i x[t][i] * w[r][i],
// the weight matrix row-major [rows][in] as GGUF stores a linear layer (ne0 = in). Callers
// split the rows across cores; each call runs every token against its rows so a weight row is
// read from memory once per call and reused from cache for every token.

#include "kernels_internal.h"

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

// Four tokens against three rows: 12 accumulators, so each 8-wide step loads 7 vectors for
// 12 multiply-adds (one row at a time loaded 5 for 4, and the loads were the limit).
HKV_AVX2 static void matmul_4x3_avx2(const float *x, size_t in, const float *w, float *y,
                                     size_t y_stride) {
  size_t body = in & ~(size_t)7;
  const float *x0 = x, *x1 = x + in, *x2 = x1 + in, *x3 = x2 + in;
  const float *w0 = w, *w1 = w + in, *w2 = w1 + in;
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  for (size_t i = 0; i < body; i += 8) {
    __m256 v0 = _mm256_loadu_ps(w0 + i), v1 = _mm256_loadu_ps(w1 + i);
    __m256 v2 = _mm256_loadu_ps(w2 + i);
    __m256 u = _mm256_loadu_ps(x0 + i);
    a00 = _mm256_fmadd_ps(u, v0, a00);
    a01 = _mm256_fmadd_ps(u, v1, a01);
    a02 = _mm256_fmadd_ps(u, v2, a02);
    u = _mm256_loadu_ps(x1 + i);
    a10 = _mm256_fmadd_ps(u, v0, a10);
    a11 = _mm256_fmadd_ps(u, v1, a11);
    a12 = _mm256_fmadd_ps(u, v2, a12);
    u = _mm256_loadu_ps(x2 + i);
    a20 = _mm256_fmadd_ps(u, v0, a20);
    a21 = _mm256_fmadd_ps(u, v1, a21);
    a22 = _mm256_fmadd_ps(u, v2, a22);
    u = _mm256_loadu_ps(x3 + i);
    a30 = _mm256_fmadd_ps(u, v0, a30);
    a31 = _mm256_fmadd_ps(u, v1, a31);
    a32 = _mm256_fmadd_ps(u, v2, a32);
  }
  float s[4][3] = {{hsum8(a00), hsum8(a01), hsum8(a02)},
                   {hsum8(a10), hsum8(a11), hsum8(a12)},
                   {hsum8(a20), hsum8(a21), hsum8(a22)},
                   {hsum8(a30), hsum8(a31), hsum8(a32)}};
  const float *xs[4] = {x0, x1, x2, x3};
  const float *ws[3] = {w0, w1, w2};
  for (size_t i = body; i < in; i++)
    for (int t = 0; t < 4; t++)
      for (int r = 0; r < 3; r++) s[t][r] += xs[t][i] * ws[r][i];
  for (int t = 0; t < 4; t++)
    for (int r = 0; r < 3; r++) y[t * y_stride + r] = s[t][r];
}

// Four tokens against one row at a time: the row's vector is loaded once for four dots.
HKV_AVX2 static void matmul_block_avx2(const float *x, size_t tokens, size_t in, const float *w,
                                       size_t rows, float *y, size_t y_stride) {
  size_t body = in & ~(size_t)7;
  size_t r = 0;
  if (tokens % 4 == 0) {
    for (; r + 3 <= rows; r += 3)
      for (size_t t = 0; t < tokens; t += 4)
        matmul_4x3_avx2(x + t * in, in, w + r * in, y + t * y_stride + r, y_stride);
  }
  for (; r < rows; r++) {
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

void matmul_rows_f32_portable(const float *x, size_t tokens, size_t in, const float *w,
                              size_t rows, float *y, size_t y_stride) {
  matmul_rows_portable(x, tokens, in, w, rows, y, y_stride);
}

void matmul_rows_f32_vectorized(const float *x, size_t tokens, size_t in, const float *w,
                                size_t rows, float *y, size_t y_stride) {
#ifdef HKV_X86
  matmul_rows_avx2(x, tokens, in, w, rows, y, y_stride);
#else
  matmul_rows_portable(x, tokens, in, w, rows, y, y_stride);
#endif
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

// ---- Weights in GGUF block formats -------------------------------------------------------
// Q4_1 block (20 bytes, 32 weights): f16 d, f16 m, 16 bytes; weight j is d * (byte j & 15) + m
// and weight j + 16 is d * (byte j >> 4) + m. Q8_0 block (34 bytes): f16 d, 32 int8; weight j
// is d * q[j].

#include <stdlib.h>
#include <string.h>

static inline float half_at(const unsigned char *p) {
  _Float16 h;
  memcpy(&h, p, 2);
  return (float)h;
}

size_t hkv_weight_row_bytes(int type, size_t in) {
  switch (type) {
  case HKV_WEIGHTS_F32: return in * 4;
  case HKV_WEIGHTS_F16: return in * 2;
  case HKV_WEIGHTS_Q4_1: return in % 32 ? 0 : in / 32 * 20;
  case HKV_WEIGHTS_Q8_0: return in % 32 ? 0 : in / 32 * 34;
  default: return 0;
  }
}

void hkv_dequantize_row(const void *w, int type, size_t in, size_t row, float *out) {
  const unsigned char *p = (const unsigned char *)w + row * hkv_weight_row_bytes(type, in);
  switch (type) {
  case HKV_WEIGHTS_F32: memcpy(out, p, in * 4); break;
  case HKV_WEIGHTS_F16:
    for (size_t i = 0; i < in; i++) out[i] = half_at(p + 2 * i);
    break;
  case HKV_WEIGHTS_Q4_1:
    for (size_t b = 0; b < in / 32; b++, p += 20, out += 32) {
      float d = half_at(p), m = half_at(p + 2);
      for (int j = 0; j < 16; j++) {
        out[j] = d * (float)(p[4 + j] & 15) + m;
        out[j + 16] = d * (float)(p[4 + j] >> 4) + m;
      }
    }
    break;
  case HKV_WEIGHTS_Q8_0:
    for (size_t b = 0; b < in / 32; b++, p += 34, out += 32) {
      float d = half_at(p);
      for (int j = 0; j < 32; j++) out[j] = d * (float)(signed char)p[2 + j];
    }
    break;
  }
}

// One token against one row, block by block, portable.
static float dot_row_portable(const float *x, const unsigned char *p, int type, size_t in) {
  float row[32];
  float s = 0;
  size_t block = type == HKV_WEIGHTS_Q4_1 ? 20 : 34;
  if (type != HKV_WEIGHTS_Q4_1 && type != HKV_WEIGHTS_Q8_0) {
    float *full = malloc(in * sizeof(float));
    hkv_dequantize_row(p, type, in, 0, full);
    for (size_t i = 0; i < in; i++) s += full[i] * x[i];
    free(full);
    return s;
  }
  for (size_t b = 0; b < in / 32; b++) {
    hkv_dequantize_row(p + b * block, type, 32, 0, row);
    for (int j = 0; j < 32; j++) s += row[j] * x[b * 32 + j];
  }
  return s;
}

#ifdef HKV_X86
// The block scales in hardware (F16C); the portable half_at is a library call.
HKV_AVX2 static inline float half_f16c(const unsigned char *p) {
  unsigned short h;
  memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Σ x[i] * q[i] over one block of 32 activations, the 32 quantized values widened to four
// vectors of eight 32-bit integers.
HKV_AVX2 static inline __m256 dot32(__m256i q0, __m256i q1, __m256i q2, __m256i q3,
                                   const float *x) {
  __m256 part = _mm256_mul_ps(_mm256_cvtepi32_ps(q0), _mm256_loadu_ps(x));
  part = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q1), _mm256_loadu_ps(x + 8), part);
  part = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q2), _mm256_loadu_ps(x + 16), part);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(q3), _mm256_loadu_ps(x + 24), part);
}

// Few tokens: each block's quantized values are widened to f32 in registers and multiplied
// with the tokens' activations; Q4_1's offset m adds m * (sum of the block's activations).
HKV_AVX2 static void gemv_q4_1_avx2(const float *x, size_t tokens, size_t in,
                                    const unsigned char *w, size_t rows, float *y,
                                    size_t y_stride) {
  size_t blocks = in / 32;
  float *xsum = malloc(tokens * blocks * sizeof(float));
  for (size_t t = 0; t < tokens; t++)
    for (size_t b = 0; b < blocks; b++) {
      float s = 0;
      for (int j = 0; j < 32; j++) s += x[t * in + b * 32 + j];
      xsum[t * blocks + b] = s;
    }
  const __m128i low = _mm_set1_epi8(15);
  for (size_t r = 0; r < rows; r++) {
    const unsigned char *p = w + r * blocks * 20;
    for (size_t t = 0; t < tokens; t++) {
      const float *xt = x + t * in;
      __m256 acc = _mm256_setzero_ps();
      float offset = 0;
      for (size_t b = 0; b < blocks; b++) {
        const unsigned char *blk = p + b * 20;
        float d = half_f16c(blk), m = half_f16c(blk + 2);
        __m128i q = _mm_loadu_si128((const __m128i *)(blk + 4));
        __m128i lo = _mm_and_si128(q, low);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        __m256 part = dot32(_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                            _mm256_cvtepu8_epi32(hi), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)),
                            xt + b * 32);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), part, acc);
        offset += m * xsum[t * blocks + b];
      }
      y[t * y_stride + r] = hsum8(acc) + offset;
    }
  }
  free(xsum);
}

HKV_AVX2 static void gemv_q8_0_avx2(const float *x, size_t tokens, size_t in,
                                    const unsigned char *w, size_t rows, float *y,
                                    size_t y_stride) {
  size_t blocks = in / 32;
  for (size_t r = 0; r < rows; r++) {
    const unsigned char *p = w + r * blocks * 34;
    for (size_t t = 0; t < tokens; t++) {
      const float *xt = x + t * in;
      __m256 acc = _mm256_setzero_ps();
      for (size_t b = 0; b < blocks; b++) {
        const unsigned char *blk = p + b * 34;
        float d = half_f16c(blk);
        __m128i q0 = _mm_loadu_si128((const __m128i *)(blk + 2));
        __m128i q1 = _mm_loadu_si128((const __m128i *)(blk + 18));
        __m256 part = dot32(_mm256_cvtepi8_epi32(q0), _mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8)),
                            _mm256_cvtepi8_epi32(q1), _mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8)),
                            xt + b * 32);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), part, acc);
      }
      y[t * y_stride + r] = hsum8(acc);
    }
  }
}
#endif

static void matmul_rows_quantized_with(int vectorized, const float *x, size_t tokens,
                                       size_t in, const void *w, int type, size_t rows,
                                       float *y, size_t y_stride) {
  void (*f32)(const float *, size_t, size_t, const float *, size_t, float *, size_t) =
      vectorized ? matmul_rows_f32_vectorized : matmul_rows_f32_portable;
  size_t row_bytes = hkv_weight_row_bytes(type, in);
  if (row_bytes == 0) return;
  const unsigned char *wb = (const unsigned char *)w;
  if (type == HKV_WEIGHTS_F32) {
    f32(x, tokens, in, (const float *)w, rows, y, y_stride);
    return;
  }
  if (tokens < 8) {
#ifdef HKV_X86
    if (vectorized && type == HKV_WEIGHTS_Q4_1) {
      gemv_q4_1_avx2(x, tokens, in, wb, rows, y, y_stride);
      return;
    }
    if (vectorized && type == HKV_WEIGHTS_Q8_0) {
      gemv_q8_0_avx2(x, tokens, in, wb, rows, y, y_stride);
      return;
    }
#endif
    for (size_t r = 0; r < rows; r++)
      for (size_t t = 0; t < tokens; t++)
        y[t * y_stride + r] = dot_row_portable(x + t * in, wb + r * row_bytes, type, in);
    return;
  }
  // Many tokens: a tile of rows dequantized once, then every token against it in f32.
  const size_t tile = 64;
  float *buffer = malloc(tile * in * sizeof(float));
  for (size_t r0 = 0; r0 < rows; r0 += tile) {
    size_t nr = rows - r0 < tile ? rows - r0 : tile;
    for (size_t r = 0; r < nr; r++) hkv_dequantize_row(wb, type, in, r0 + r, buffer + r * in);
    f32(x, tokens, in, buffer, nr, y + r0, y_stride);
  }
  free(buffer);
}

void matmul_rows_quantized_portable(const float *x, size_t tokens, size_t in, const void *w,
                                    int type, size_t rows, float *y, size_t y_stride) {
  matmul_rows_quantized_with(0, x, tokens, in, w, type, rows, y, y_stride);
}

void matmul_rows_quantized_vectorized(const float *x, size_t tokens, size_t in, const void *w,
                                      int type, size_t rows, float *y, size_t y_stride) {
  matmul_rows_quantized_with(1, x, tokens, in, w, type, rows, y, y_stride);
}
