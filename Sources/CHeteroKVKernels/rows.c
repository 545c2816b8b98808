// A memory node keeps a shard's rows in fixed-size pages, so the rows a request names are
// scattered: the caller resolves and checks every index, then copies the rows contiguous with
// hkv_gather_rows_f16 (once per request, whatever the number of heads). Also CRC-32C for the
// data plane's frames.

#include "kernels_internal.h"

#ifdef HKV_X86
#define HKV_SSE42 __attribute__((target("sse4.2")))
#endif

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

#endif

void hkv_gather_rows_f16(const uint16_t *const *rows, size_t n, size_t d, uint16_t *dst) {
  gather_rows_portable(rows, n, d, dst);
}

uint32_t crc32c_table_driven(uint32_t crc, const void *data, size_t n) {
  return crc32c_portable(crc, data, n);
}

uint32_t crc32c_hardware(uint32_t crc, const void *data, size_t n) {
#ifdef HKV_X86
  return crc32c_sse42(crc, data, n);
#else
  return crc32c_portable(crc, data, n);
#endif
}
