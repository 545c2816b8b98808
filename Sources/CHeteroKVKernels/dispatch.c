// The two kernel tables, the choice between them (once, by CPU features), the hkv_* entry
// points that call the table in use, and the kernels built from others (grouped scalar
// scores, tau-mass selection).

#include "kernels_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sq_scores_with(const hkv_kernel_table *t, const float *qs, const float *bias,
                           size_t heads, const uint8_t *codes, size_t n, size_t d, size_t bits,
                           float scale, float *scores, size_t stride) {
  if (bits == 4) {
    t->sq4_scores(qs, bias, heads, codes, n, d, scale, scores, stride);
  } else if (d <= 1024) {
    sq_scores_generic(qs, bias, heads, codes, n, d, bits, scale, scores, stride);
  }
}

static void sq_group_scores_with(const hkv_kernel_table *t, const float *q, size_t heads,
                                 const uint8_t *codes, const uint16_t *scales,
                                 const uint16_t *zeros, size_t groups, size_t group_size,
                                 size_t d, size_t bits, float scale, float *scores,
                                 size_t stride) {
  if (groups == 0 || heads == 0) return;
  float *buf = malloc(sizeof(float) * (heads * d + heads + 2 * d));
  if (!buf) return;
  float *qs = buf, *bias = buf + heads * d, *sc = bias + heads, *zp = sc + d;
  // The integer path: 4-bit codes, whole groups of four heads, d a multiple of 64.
  int16_t *q16 = NULL;
  float alpha[1024];
#ifdef HKV_X86
  if (bits == 4 && d % 64 == 0 && heads % 4 == 0 && heads <= 1024 && t->vectorized)
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
    t->f16_to_f32(scales + g * d, sc, d);
    t->f16_to_f32(zeros + g * d, zp, d);
    for (size_t h = 0; h < heads; h++) {
      float b = 0;
      for (size_t c = 0; c < d; c++) {
        qs[h * d + c] = q[h * d + c] * sc[c];
        b += q[h * d + c] * zp[c];
      }
      bias[h] = b;
    }
    sq_scores_with(t, qs, bias, heads, codes + g * code_bytes, group_size, d, bits, scale,
                   scores + g * group_size, stride);
  }
  free(q16);
  free(buf);
}

static void sq_group_scores_portable(const float *q, size_t heads, const uint8_t *codes,
                                     const uint16_t *scales, const uint16_t *zeros,
                                     size_t groups, size_t group_size, size_t d, size_t bits,
                                     float scale, float *scores, size_t stride) {
  sq_group_scores_with(hkv_kernels_portable(), q, heads, codes, scales, zeros, groups,
                       group_size, d, bits, scale, scores, stride);
}

static const hkv_kernel_table portable_table = {
    .vectorized = 0,
    .f16_to_f32 = f16_to_f32_portable,
    .f32_to_f16 = f32_to_f16_portable,
    .scores_f16 = scores_f16_portable,
    .weighted_sum_dense_f16 = weighted_sum_dense_portable,
    .weighted_sum_sparse_multi_f16 = weighted_sum_sparse_multi_portable,
    .scores_f16_rows = scores_f16_rows_portable,
    .weighted_sum_rows_f16 = weighted_sum_rows_portable,
    .pq_scores_x4 = pq_scores_x4_portable,
    .pq_scores_x4_u8 = pq_scores_x4_u8_portable,
    .pq_lut_x4 = pq_lut_x4_portable,
    .pq4_scores = pq4_scores_portable,
    .pq8_scores = pq8_scores_portable,
    .pq8_lut = pq8_lut_portable,
    .sq4_scores = sq4_scores_portable,
    .sq_group_scores = sq_group_scores_portable,
    .nearest_centroids = nearest_centroids_portable,
    .softmax_exp = softmax_exp_portable,
    .softmax_exp_chunked = softmax_exp_chunked_portable,
    .group_mean_buckets = group_mean_buckets_portable,
    .keep_compress = keep_compress_portable,
    .scan_sum_f32 = scan_sum_portable,
    .crc32c = crc32c_table_driven,
    .matmul_rows_f32 = matmul_rows_f32_portable,
    .matmul_rows_quantized = matmul_rows_quantized_portable,
};

const hkv_kernel_table *_Nonnull hkv_kernels_portable(void) { return &portable_table; }

#ifdef HKV_X86

static void sq_group_scores_avx2(const float *q, size_t heads, const uint8_t *codes,
                                 const uint16_t *scales, const uint16_t *zeros, size_t groups,
                                 size_t group_size, size_t d, size_t bits, float scale,
                                 float *scores, size_t stride) {
  sq_group_scores_with(hkv_kernels_avx2(), q, heads, codes, scales, zeros, groups, group_size,
                       d, bits, scale, scores, stride);
}

// The AVX2 + FMA + F16C kernels, shared by the AVX2 table and the AVX-512 one built on it.
#define AVX2_KERNELS \
  .vectorized = 1, \
  .f16_to_f32 = f16_to_f32_avx2, \
  .f32_to_f16 = f32_to_f16_avx2, \
  .scores_f16 = scores_f16_avx2, \
  .weighted_sum_dense_f16 = weighted_sum_dense_avx2, \
  .weighted_sum_sparse_multi_f16 = weighted_sum_sparse_multi_avx2, \
  .scores_f16_rows = scores_f16_rows_avx2, \
  .weighted_sum_rows_f16 = weighted_sum_rows_avx2, \
  .pq_scores_x4 = pq_scores_x4_avx2, \
  .pq_scores_x4_u8 = pq_scores_x4_u8_avx2, \
  .pq_lut_x4 = pq_lut_x4_avx2, \
  .pq4_scores = pq4_scores_avx2, \
  .sq4_scores = sq4_scores_avx2, \
  .sq_group_scores = sq_group_scores_avx2, \
  .nearest_centroids = nearest_centroids_avx2, \
  .softmax_exp = softmax_exp_avx2, \
  .softmax_exp_chunked = softmax_exp_chunked_avx2, \
  .group_mean_buckets = group_mean_buckets_avx2, \
  .keep_compress = keep_compress_avx2, \
  .scan_sum_f32 = scan_sum_avx2, \
  .crc32c = crc32c_hardware, \
  .matmul_rows_f32 = matmul_rows_f32_vectorized, \
  .matmul_rows_quantized = matmul_rows_quantized_vectorized

static const hkv_kernel_table avx2_table = {
    AVX2_KERNELS,
    // 256-entry tables do not fit AVX2's 16-byte shuffles.
    .pq8_scores = pq8_scores_portable,
    .pq8_lut = pq8_lut_portable,
};

static const hkv_kernel_table avx512_table = {
    AVX2_KERNELS,
    .pq8_scores = pq8_scores_avx512,
    .pq8_lut = pq8_lut_avx512,
};

static int avx2_state = -1;

const hkv_kernel_table *_Nullable hkv_kernels_avx2(void) {
  int state = __atomic_load_n(&avx2_state, __ATOMIC_RELAXED);
  if (state < 0) {
    __builtin_cpu_init();
    // SSE4.2 (the CRC instruction) comes with every AVX2 CPU.
    state = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c") && __builtin_cpu_supports("sse4.2");
    __atomic_store_n(&avx2_state, state, __ATOMIC_RELAXED);
  }
  return state ? &avx2_table : NULL;
}

static int avx512_state = -1;

const hkv_kernel_table *_Nullable hkv_kernels_avx512(void) {
  int state = __atomic_load_n(&avx512_state, __ATOMIC_RELAXED);
  if (state < 0) {
    __builtin_cpu_init();
    state = hkv_kernels_avx2() != NULL && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi");
    __atomic_store_n(&avx512_state, state, __ATOMIC_RELAXED);
  }
  return state ? &avx512_table : NULL;
}

#else

const hkv_kernel_table *_Nullable hkv_kernels_avx2(void) { return NULL; }

const hkv_kernel_table *_Nullable hkv_kernels_avx512(void) { return NULL; }

#endif

// The best set the CPU has, capped by HKV_KERNELS (portable, avx2 or avx512) where it is set:
// an operator pins a mixed fleet to the same arithmetic (one-byte codes are scored from byte
// tables only by the AVX-512 set), and a benchmark compares sets in one binary. Read once.
static const hkv_kernel_table *choose_kernels(void) {
  const char *cap = getenv("HKV_KERNELS");
  int level = 2;
  if (cap && *cap) {
    if (strcmp(cap, "portable") == 0) level = 0;
    else if (strcmp(cap, "avx2") == 0) level = 1;
    else if (strcmp(cap, "avx512") != 0)
      fprintf(stderr, "HKV_KERNELS=%s is not portable, avx2 or avx512: ignored\n", cap);
  }
  const hkv_kernel_table *t = level >= 2 ? hkv_kernels_avx512() : NULL;
  if (!t && level >= 1) t = hkv_kernels_avx2();
  return t ? t : &portable_table;
}

static const hkv_kernel_table *active_kernels = NULL;

const hkv_kernel_table *hkv_active_kernels(void) {
  const hkv_kernel_table *t = __atomic_load_n(&active_kernels, __ATOMIC_ACQUIRE);
  if (!t) {
    t = choose_kernels();
    __atomic_store_n(&active_kernels, t, __ATOMIC_RELEASE);
  }
  return t;
}

int hkv_pq8_lookups_in_registers(void) {
  return hkv_active_kernels()->pq8_scores != pq8_scores_portable;
}

int hkv_kernels_vectorized(void) { return hkv_active_kernels()->vectorized; }

void hkv_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
  hkv_active_kernels()->f16_to_f32(src, dst, n);
}

void hkv_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
  hkv_active_kernels()->f32_to_f16(src, dst, n);
}

void hkv_scores_f16(const float *q, size_t heads, const uint16_t *keys, size_t n, size_t d,
                    float scale, float *scores) {
  hkv_active_kernels()->scores_f16(q, heads, keys, n, d, scale, scores);
}

void hkv_weighted_sum_dense_f16(const uint16_t *values, size_t n, size_t d, const float *probs,
                                size_t heads, float *out) {
  hkv_active_kernels()->weighted_sum_dense_f16(values, n, d, probs, heads, out);
}

void hkv_weighted_sum_sparse_multi_f16(const uint16_t *values, size_t d, const int32_t *indices,
                                       const float *weights, size_t count, size_t heads,
                                       float *out) {
  hkv_active_kernels()->weighted_sum_sparse_multi_f16(values, d, indices, weights, count, heads,
                                                      out);
}

void hkv_scores_f16_rows(const float *q, size_t heads, const uint16_t *const *rows, size_t n,
                         size_t d, float scale, float *scores) {
  hkv_active_kernels()->scores_f16_rows(q, heads, rows, n, d, scale, scores);
}

void hkv_weighted_sum_rows_f16(const uint16_t *const *rows, size_t n, size_t d,
                               const float *probs, size_t heads, float *out) {
  hkv_active_kernels()->weighted_sum_rows_f16(rows, n, d, probs, heads, out);
}

void hkv_pq_scores_x4(const float *lut, size_t g, size_t c, const uint16_t *codes, size_t n,
                      float *scores) {
  hkv_active_kernels()->pq_scores_x4(lut, g, c, codes, n, scores);
}

void hkv_pq_scores_x4_u8(const float *lut, size_t g, size_t c, const uint8_t *codes, size_t n,
                         float *scores) {
  hkv_active_kernels()->pq_scores_x4_u8(lut, g, c, codes, n, scores);
}

void hkv_pq_lut_x4(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                   size_t heads, float *lut) {
  hkv_active_kernels()->pq_lut_x4(centroids, g, c, s, q, heads, lut);
}

void hkv_pq4_scores(const uint8_t *lut, const float *lut_scale, const float *lut_bias,
                    size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores,
                    size_t stride) {
  hkv_active_kernels()->pq4_scores(lut, lut_scale, lut_bias, heads, g, blocks, n, scores, stride);
}

void hkv_pq8_scores(const uint8_t *lut, const float *lut_scale, const float *lut_bias,
                    size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores,
                    size_t stride) {
  hkv_active_kernels()->pq8_scores(lut, lut_scale, lut_bias, heads, g, blocks, n, scores, stride);
}

void hkv_pq8_lut(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                 size_t heads, float *scratch, uint8_t *lut, float *lut_scale, float *lut_bias) {
  hkv_active_kernels()->pq8_lut(centroids, g, c, s, q, heads, scratch, lut, lut_scale, lut_bias);
}

void hkv_sq4_scores(const float *qs, const float *bias, size_t heads, const uint8_t *codes,
                    size_t n, size_t d, float scale, float *scores, size_t stride) {
  hkv_active_kernels()->sq4_scores(qs, bias, heads, codes, n, d, scale, scores, stride);
}

void hkv_sq_scores(const float *qs, const float *bias, size_t heads, const uint8_t *codes,
                   size_t n, size_t d, size_t bits, float scale, float *scores, size_t stride) {
  sq_scores_with(hkv_active_kernels(), qs, bias, heads, codes, n, d, bits, scale, scores, stride);
}

void hkv_sq_group_scores(const float *q, size_t heads, const uint8_t *codes,
                         const uint16_t *scales, const uint16_t *zeros, size_t groups,
                         size_t group_size, size_t d, size_t bits, float scale, float *scores,
                         size_t stride) {
  hkv_active_kernels()->sq_group_scores(q, heads, codes, scales, zeros, groups, group_size, d,
                                        bits, scale, scores, stride);
}

void hkv_nearest_centroids(const float *points, size_t n, size_t stride, size_t s,
                           const float *centroids, const float *norms, size_t c,
                           uint16_t *codes, size_t code_stride) {
  hkv_active_kernels()->nearest_centroids(points, n, stride, s, centroids, norms, c, codes,
                                          code_stride);
}

// Scratch for the nearest-centroid tables, grown to the largest seen by the thread and reused.
static float *nearest_scratch(size_t floats) {
  static _Thread_local float *scratch;
  static _Thread_local size_t scratch_floats;
  if (floats > scratch_floats) {
    free(scratch);
    scratch = malloc(sizeof(float) * floats);
    scratch_floats = scratch ? floats : 0;
  }
  return scratch;
}

// The structure-of-arrays table [s][c] and squared norms of c centroids [c][s], then the
// kernel. `soa` holds c * (s + 1) floats.
static void nearest_from_aos(const float *points, size_t n, size_t stride, size_t s,
                             const float *aos, size_t c, float *soa, uint16_t *codes,
                             size_t code_stride) {
  float *norms = soa + c * s;
  for (size_t m = 0; m < c; m++) {
    float norm = 0;
    for (size_t k = 0; k < s; k++) {
      float v = aos[m * s + k];
      soa[k * c + m] = v;
      norm += v * v;
    }
    norms[m] = norm;
  }
  hkv_active_kernels()->nearest_centroids(points, n, stride, s, soa, norms, c, codes,
                                          code_stride);
}

int hkv_nearest_centroids_aos(const float *points, size_t n, size_t stride, size_t s,
                              const float *centroids, size_t c, uint16_t *codes,
                              size_t code_stride) {
  float *soa = nearest_scratch(c * (s + 1));
  if (!soa) return -1;
  nearest_from_aos(points, n, stride, s, centroids, c, soa, codes, code_stride);
  return 0;
}

int hkv_nearest_centroids_f16(const float *points, size_t n, size_t stride, size_t s,
                              const uint16_t *centroids, size_t c, uint16_t *codes,
                              size_t code_stride) {
  // A decode step's few keys over two-dim sub-spaces: read the fp16 pairs directly (the same
  // codes); a prefill's many keys amortize the table below.
#ifdef HKV_X86
  if (s == 2 && c % 8 == 0 && n < 16 && hkv_kernels_avx2()) {
    nearest_centroids_f16_pairs_avx2(points, n, stride, centroids, c, codes, code_stride);
    return 0;
  }
#endif
  float *aos = nearest_scratch(c * s * 2 + c);
  if (!aos) return -1;
  hkv_active_kernels()->f16_to_f32(centroids, aos, c * s);
  nearest_from_aos(points, n, stride, s, aos, c, aos + c * s, codes, code_stride);
  return 0;
}

float hkv_softmax_exp(float *x, size_t n, float *max_out) {
  return hkv_active_kernels()->softmax_exp(x, n, max_out);
}

float hkv_softmax_exp_chunked(const float *x, size_t n, float *w, float *chunk_max,
                              float *max_out) {
  return hkv_active_kernels()->softmax_exp_chunked(x, n, w, chunk_max, max_out);
}

uint16_t hkv_group_mean_buckets(const float *w, size_t heads, size_t n, const float *coef,
                                int32_t top_bucket, float *mean, uint16_t *bucket) {
  return hkv_active_kernels()->group_mean_buckets(w, heads, n, coef, top_bucket, mean, bucket);
}

size_t hkv_keep_compress(const uint16_t *bucket, size_t n, uint16_t boundary, float *w,
                         size_t heads, const float *coef, int32_t *indices, float *kept_mass) {
  return hkv_active_kernels()->keep_compress(bucket, n, boundary, w, heads, coef, indices,
                                             kept_mass);
}

double hkv_scan_sum_f32(const float *x, size_t n) {
  return hkv_active_kernels()->scan_sum_f32(x, n);
}

uint32_t hkv_crc32c(uint32_t crc, const void *data, size_t n) {
  return hkv_active_kernels()->crc32c(crc, data, n);
}

void hkv_matmul_rows_f32(const float *x, size_t tokens, size_t in, const float *w, size_t rows,
                         float *y, size_t y_stride) {
  hkv_active_kernels()->matmul_rows_f32(x, tokens, in, w, rows, y, y_stride);
}

void hkv_matmul_rows_quantized(const float *x, size_t tokens, size_t in, const void *w,
                               int type, size_t rows, float *y, size_t y_stride) {
  hkv_active_kernels()->matmul_rows_quantized(x, tokens, in, w, type, rows, y, y_stride);
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

enum { TAU_BUCKETS = 4096 };

// Scratch reused by the thread across calls (grown when a longer context comes): fresh
// buffers of 10 bytes per token came from mmap past 128 KiB, and their page faults cost a
// fifth of a 128K-token selection. A thread keeps at most its longest context's worth.
// `w` holds `w_floats` floats (n for one head; a group's rows, their mean and per-chunk
// coefficients for a group).
typedef struct {
  float *w;
  uint16_t *bucket;
  int32_t *cand;
} tau_scratch;

static int tau_scratch_for(size_t n, size_t w_floats, tau_scratch *out) {
  static _Thread_local float *w_scratch;
  static _Thread_local uint16_t *bucket_scratch;
  static _Thread_local int32_t *cand_scratch;
  static _Thread_local size_t scratch_n, scratch_w;
  if (n > scratch_n || w_floats > scratch_w) {
    size_t grow_n = n > scratch_n ? n : scratch_n;
    size_t grow_w = w_floats > scratch_w ? w_floats : scratch_w;
    free(w_scratch);
    free(bucket_scratch);
    free(cand_scratch);
    w_scratch = malloc(sizeof(float) * grow_w);
    bucket_scratch = malloc(sizeof(uint16_t) * grow_n);
    cand_scratch = malloc(sizeof(int32_t) * grow_n);
    scratch_n = grow_n;
    scratch_w = grow_w;
    if (!w_scratch || !bucket_scratch || !cand_scratch) {
      free(w_scratch);
      free(bucket_scratch);
      free(cand_scratch);
      w_scratch = NULL;
      bucket_scratch = NULL;
      cand_scratch = NULL;
      scratch_n = 0;
      scratch_w = 0;
      return 0;
    }
  }
  out->w = w_scratch;
  out->bucket = bucket_scratch;
  out->cand = cand_scratch;
  return 1;
}

// The boundary of a tau-mass set over weights `w` (any positive scale) already bucketed in
// descending order of weight (`bucket[j]`, at most `used`): whole buckets are kept while the
// mass stays below tau of the total, and the boundary bucket's tokens are taken by weight until
// it is reached. Those taken are marked HKV_TAU_TAKEN in `bucket`; the set is then every token
// below the returned boundary or marked (hkv_keep_compress). `cand` holds n.
static uint16_t tau_mark(const float *w, uint16_t *bucket, uint16_t used, size_t n, float tau,
                         int32_t *cand) {
  // Four interleaved histograms, so consecutive tokens in one bucket do not wait on each
  // other's read-modify-write. They start zero (thread-local storage) and only the buckets
  // a call used are cleared after it: most weights sit a few nats below the largest, so a call
  // touches tens of buckets, not all 4,096 (clearing 64 KiB per call cost as much as the
  // histogram itself).
  static _Thread_local float mass4[4][TAU_BUCKETS];
  size_t j4 = 0;
  for (; j4 + 4 <= n; j4 += 4) {
    mass4[0][bucket[j4]] += w[j4];
    mass4[1][bucket[j4 + 1]] += w[j4 + 1];
    mass4[2][bucket[j4 + 2]] += w[j4 + 2];
    mass4[3][bucket[j4 + 3]] += w[j4 + 3];
  }
  for (; j4 < n; j4++) mass4[0][bucket[j4]] += w[j4];
  double total = 0;
  for (int b = 0; b <= used; b++)
    total += (double)mass4[0][b] + mass4[1][b] + mass4[2][b] + mass4[3][b];
  double target = (double)tau * total, cumulative = 0;
  uint16_t boundary = used;
  for (int b = 0; b <= used; b++) {
    double mass = (double)mass4[0][b] + mass4[1][b] + mass4[2][b] + mass4[3][b];
    if (cumulative + mass >= target) {
      boundary = (uint16_t)b;
      break;
    }
    cumulative += mass;
  }
  for (int r = 0; r < 4; r++) memset(mass4[r], 0, sizeof(float) * (size_t)(used + 1));
  // The boundary bucket's tokens (few: a 1/64-nat slice): 16 buckets are compared at once (the
  // compiler vectorizes it) and only a group holding one is walked.
  size_t candidates = 0, j = 0;
  for (; j + 16 <= n; j += 16) {
    int any = 0;
    for (int k = 0; k < 16; k++) any |= bucket[j + k] == boundary;
    if (!any) continue;
    for (int k = 0; k < 16; k++) {
      cand[candidates] = (int32_t)(j + k);
      candidates += bucket[j + k] == boundary;
    }
  }
  for (; j < n; j++) {
    cand[candidates] = (int32_t)j;
    candidates += bucket[j] == boundary;
  }
  tau_sort_weights = w;
  qsort(cand, candidates, sizeof(int32_t), by_weight_desc);
  size_t taken = 0;
  while (taken < candidates && cumulative < target) cumulative += w[cand[taken++]];
  for (size_t t = 0; t < taken; t++) bucket[cand[t]] = HKV_TAU_TAKEN;
  return boundary;
}

// A tau-mass set held to `cap` tokens by weight `w`: the marked set's indices (ascending) cut to
// the `cap` heaviest; the kept count.
static size_t tau_capped(const float *w, const uint16_t *bucket, uint16_t boundary, size_t n,
                         size_t cap, int32_t *indices) {
  size_t kept = 0;
  for (size_t j = 0; j < n; j++) {
    indices[kept] = (int32_t)j;
    kept += bucket[j] < boundary || bucket[j] == HKV_TAU_TAKEN;
  }
  if (kept > cap) {
    tau_sort_weights = w;
    qsort(indices, kept, sizeof(int32_t), by_weight_desc);
    kept = cap;
    qsort(indices, kept, sizeof(int32_t), by_index);
  }
  return kept;
}

// The kept set of a selection marked in `bucket`, with each head's weights (rows of `w`,
// chunk coefficients `coef`) into weights[h * kept + k] and their sums into kept_mass: packed
// in one pass where there is no cap, gathered after the cut where there is.
static size_t tau_emit(const uint16_t *bucket, uint16_t boundary, size_t n, size_t cap,
                       const float *order, float *w, size_t heads, const float *coef,
                       int32_t *indices, float *weights, float *kept_mass) {
  size_t chunks = (n + HKV_SELECT_CHUNK - 1) / HKV_SELECT_CHUNK, kept;
  if (cap == 0) {
    kept = hkv_active_kernels()->keep_compress(bucket, n, boundary, w, heads, coef, indices,
                                               kept_mass);
    for (size_t h = 0; h < heads; h++) memcpy(weights + h * kept, w + h * n, sizeof(float) * kept);
    return kept;
  }
  kept = tau_capped(order, bucket, boundary, n, cap, indices);
  for (size_t h = 0; h < heads; h++) {
    const float *wh = w + h * n, *ch = coef + h * chunks;
    float *out = weights + h * kept, sum = 0;
    for (size_t t = 0; t < kept; t++) {
      int32_t j = indices[t];
      out[t] = wh[j] * ch[j / HKV_SELECT_CHUNK];
      sum += out[t];
    }
    kept_mass[h] = sum;
  }
  return kept;
}

size_t hkv_tau_select(const float *scores, size_t n, float tau, size_t cap, int32_t *indices,
                      float *weights, float *kept_mass, float *log_normalizer) {
  // 1/64 nat per bucket over 64 nats: the boundary bucket that must be sorted stays small.
  const float per_nat = 64.0f;
  *kept_mass = 0;
  if (n == 0) return 0;
  size_t chunks = (n + HKV_SELECT_CHUNK - 1) / HKV_SELECT_CHUNK;
  tau_scratch scratch;
  if (!tau_scratch_for(n, n + chunks, &scratch)) return 0;
  float *w = scratch.w, *coef = w + n;
  uint16_t *bucket = scratch.bucket;
  memcpy(w, scores, sizeof(float) * n);
  float m;
  float total = hkv_active_kernels()->softmax_exp(w, n, &m);
  if (!(m > -INFINITY) || !(total > 0) || total == INFINITY) {
    return 0;
  }
  if (log_normalizer) *log_normalizer = m + logf(total);
  // Buckets first, in a loop with no stores but to `bucket` (the compiler vectorizes it;
  // fminf also sends a NaN or infinite gap to the last bucket), then the scatter-add alone.
  uint16_t used = 0;
  for (size_t j = 0; j < n; j++) {
    // A NaN score can leave `m` below a lane's value: a negative or NaN gap goes to the last
    // bucket too, so the histogram index stays in range.
    float gap = (m - scores[j]) * per_nat;
    gap = gap >= 0 ? fminf(gap, (float)(TAU_BUCKETS - 1)) : (float)(TAU_BUCKETS - 1);
    uint16_t b = (uint16_t)(int)gap;
    bucket[j] = b;
    used = b > used ? b : used;
  }
  uint16_t boundary = tau_mark(w, bucket, used, n, tau, scratch.cand);
  float inv = 1.0f / total;
  for (size_t c = 0; c < chunks; c++) coef[c] = inv;
  return tau_emit(bucket, boundary, n, cap, w, w, 1, coef, indices, weights, kept_mass);
}

size_t hkv_tau_select_group(const float *scores, size_t heads, size_t n, float tau, size_t cap,
                            int32_t *indices, float *weights, float *kept_mass,
                            float *log_normalizers) {
  for (size_t h = 0; h < heads; h++) kept_mass[h] = 0;
  if (n == 0 || heads == 0 || heads > 64) return 0;
  size_t chunks = (n + HKV_SELECT_CHUNK - 1) / HKV_SELECT_CHUNK;
  tau_scratch scratch;
  if (!tau_scratch_for(n, (heads + 1) * n + heads * chunks, &scratch)) return 0;
  const hkv_kernel_table *kernels = hkv_active_kernels();
  // Summed probabilities over the heads (the mean's order and tau-mass set, at any scale).
  float *sum = scratch.w + heads * n;
  // Per head and chunk: first the running maximum its numerators are taken against, then the
  // coefficient that turns them into the head's probabilities.
  float *coef = sum + n;
  float bound = 0;
  // Each head's numerators in one pass over its scores; its normalizer from their sum.
  for (size_t h = 0; h < heads; h++) {
    float m;
    float total =
        kernels->softmax_exp_chunked(scores + h * n, n, scratch.w + h * n, coef + h * chunks, &m);
    if (!(m > -INFINITY) || !(total > 0) || !(total < INFINITY)) return 0;
    log_normalizers[h] = m + logf(total);
    float inv = 1.0f / total;
    for (size_t c = 0; c < chunks; c++) coef[h * chunks + c] = expf(coef[h * chunks + c] - m) * inv;
    bound += inv;
  }
  // Buckets from the float bits of the (positive) summed probabilities: the exponent and the
  // top 6 mantissa bits, so 64 buckets an octave (about 1/92 nat) without a logarithm; a
  // larger weight has larger bits. Counted down from a bound no sum exceeds (every numerator
  // is at most 1), so one pass computes, stores and buckets the sums.
  uint32_t bound_bits;
  memcpy(&bound_bits, &bound, 4);
  uint16_t used = kernels->group_mean_buckets(scratch.w, heads, n, coef,
                                              (int32_t)(bound_bits >> 17), sum, scratch.bucket);
  uint16_t boundary = tau_mark(sum, scratch.bucket, used, n, tau, scratch.cand);
  return tau_emit(scratch.bucket, boundary, n, cap, sum, scratch.w, heads, coef, indices, weights,
                  kept_mass);
}
