// Kernels over rows reached through a table of pointers: a memory node keeps a shard's rows in
// fixed-size pages, so the rows a request names are scattered; the caller resolves and checks
// every index first and passes one pointer per row.

#include "hkv_kernels.h"

#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define HKV_X86 1
#include <immintrin.h>
#define HKV_AVX2 __attribute__((target("avx2,fma,f16c")))
#define HKV_SSE42 __attribute__((target("sse4.2")))
#endif

static inline float half_bits_to_float(uint16_t h) {
  _Float16 v;
  memcpy(&v, &h, sizeof v);
  return (float)v;
}

static void dot_rows_portable(const float *q, const uint16_t *const *rows, size_t n, size_t d,
                              float scale, float *scores) {
  for (size_t j = 0; j < n; j++) {
    float s = 0;
    for (size_t c = 0; c < d; c++) s += q[c] * half_bits_to_float(rows[j][c]);
    scores[j] = s * scale;
  }
}

static void axpy_rows_portable(const uint16_t *const *rows, const float *w, size_t n, size_t d,
                               float *out) {
  for (size_t j = 0; j < n; j++)
    for (size_t c = 0; c < d; c++) out[c] += w[j] * half_bits_to_float(rows[j][c]);
}

static void gather_rows_portable(const uint16_t *const *rows, size_t n, size_t d,
                                 uint16_t *dst) {
  for (size_t j = 0; j < n; j++) memcpy(dst + j * d, rows[j], d * sizeof(uint16_t));
}

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one byte at a time from a table.
static uint32_t crc_table[256];
static int crc_table_ready = 0;

static void crc_table_init(void) {
  if (__atomic_load_n(&crc_table_ready, __ATOMIC_ACQUIRE)) return;
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[i] = c;
  }
  __atomic_store_n(&crc_table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc32c_portable(uint32_t crc, const uint8_t *p, size_t n) {
  crc_table_init();
  crc = ~crc;
  for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#ifdef HKV_X86

HKV_AVX2 static float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

HKV_AVX2 static void dot_rows_avx2(const float *q, const uint16_t *const *rows, size_t n,
                                   size_t d, float scale, float *scores) {
  if (d % 16 != 0) {
    dot_rows_portable(q, rows, n, d, scale, scores);
    return;
  }
  for (size_t j = 0; j < n; j++) {
    if (j + 8 < n)
      for (size_t o = 0; o < d * 2; o += 64) _mm_prefetch((const char *)rows[j + 8] + o, _MM_HINT_T0);
    const uint16_t *k = rows[j];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (size_t c = 0; c < d; c += 16) {
      a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + c))),
                           _mm256_loadu_ps(q + c), a0);
      a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + c + 8))),
                           _mm256_loadu_ps(q + c + 8), a1);
    }
    scores[j] = hsum(_mm256_add_ps(a0, a1)) * scale;
  }
}

// Up to 128 dims stay in sixteen accumulators across all rows; wider heads go 128 at a time.
HKV_AVX2 static void axpy_rows_avx2(const uint16_t *const *rows, const float *w, size_t n,
                                    size_t d, float *out) {
  if (d % 8 != 0) {
    axpy_rows_portable(rows, w, n, d, out);
    return;
  }
  for (size_t base = 0; base < d; base += 128) {
    size_t width = d - base < 128 ? d - base : 128;
    size_t chunks = width / 8;
    __m256 acc[16];
    for (size_t c = 0; c < chunks; c++) acc[c] = _mm256_loadu_ps(out + base + c * 8);
    for (size_t j = 0; j < n; j++) {
      if (j + 8 < n)
        for (size_t o = 0; o < width * 2; o += 64)
          _mm_prefetch((const char *)(rows[j + 8] + base) + o, _MM_HINT_T0);
      const uint16_t *v = rows[j] + base;
      __m256 wj = _mm256_set1_ps(w[j]);
      for (size_t c = 0; c < chunks; c++)
        acc[c] = _mm256_fmadd_ps(
            wj, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + c * 8))), acc[c]);
    }
    for (size_t c = 0; c < chunks; c++) _mm256_storeu_ps(out + base + c * 8, acc[c]);
  }
}

HKV_SSE42 static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t n) {
  uint64_t c = ~crc;
  // Eight bytes per instruction, one stream: about 8 bytes per 3 cycles, well above what a
  // frame's other copies cost.
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}

static int sse42_state = -1;
static int has_sse42(void) {
  int s = __atomic_load_n(&sse42_state, __ATOMIC_RELAXED);
  if (s >= 0) return s;
  __builtin_cpu_init();
  s = __builtin_cpu_supports("sse4.2") ? 1 : 0;
  __atomic_store_n(&sse42_state, s, __ATOMIC_RELAXED);
  return s;
}

#endif

void hkv_dot_rows_f16(const float *q, const uint16_t *const *rows, size_t n, size_t d,
                      float scale, float *scores) {
#ifdef HKV_X86
  if (hkv_kernels_vectorized()) {
    dot_rows_avx2(q, rows, n, d, scale, scores);
    return;
  }
#endif
  dot_rows_portable(q, rows, n, d, scale, scores);
}

void hkv_axpy_rows_f16(const uint16_t *const *rows, const float *weights, size_t n, size_t d,
                       float *out) {
#ifdef HKV_X86
  if (hkv_kernels_vectorized()) {
    axpy_rows_avx2(rows, weights, n, d, out);
    return;
  }
#endif
  axpy_rows_portable(rows, weights, n, d, out);
}

void hkv_gather_rows_f16(const uint16_t *const *rows, size_t n, size_t d, uint16_t *dst) {
  gather_rows_portable(rows, n, d, dst);
}

uint32_t hkv_crc32c(uint32_t crc, const void *data, size_t n) {
#ifdef HKV_X86
  if (hkv_kernels_vectorized() && has_sse42()) return crc32c_sse42(crc, data, n);
#endif
  return crc32c_portable(crc, data, n);
}
