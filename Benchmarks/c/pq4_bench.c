// Scoring from 4-bit fast-scan codes against one-byte PQ codes of the same size and against the
// machine's read bandwidth, on one and two threads, straight on the kernel sources (no Swift
// build needed: a minute, where the hkv-bench package takes a full release build).
//
//   K=Sources/CHeteroKVKernels
//   clang -O2 -pthread -Wno-nullability-completeness -I$K/include -I$K Benchmarks/c/pq4_bench.c \
//     $K/portable.c $K/avx2_coded.c $K/avx2_dense.c $K/dispatch.c $K/dense.c $K/rows.c -lm \
//     -o /tmp/pq4_bench && /tmp/pq4_bench
//
// Llama-3-8B geometry: 131,072 tokens x 8 KV heads x dim 128, 4 query heads per KV head; both
// codecs take 32 bytes a token (4 bits over 2 dims, 8 bits over 4). Best of 5 runs.

#include "hkv_kernels.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { TOKENS = 131072, KV_HEADS = 8, DIM = 128, GROUP = 4, REPEATS = 5 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
  int codec;  // 0: scan, 1: 4-bit fast scan, 2: one-byte PQ
  size_t first, heads;
} job;

static float *scan_data;
static size_t scan_floats;
static uint8_t *blocks[KV_HEADS], *codes8[KV_HEADS];
static uint8_t *lut4;
static float lut4_scale[GROUP], lut4_bias[GROUP], *lut8;
static float *scores[2];
static volatile double sink;

static void run_job(const job *j, size_t thread) {
  const hkv_kernel_table *t = hkv_kernels_avx2() ? hkv_kernels_avx2() : hkv_kernels_portable();
  if (j->codec == 0) {
    sink += t->scan_sum_f32(scan_data + j->first, j->heads);
    return;
  }
  for (size_t h = j->first; h < j->first + j->heads; h++) {
    if (j->codec == 1)
      t->pq4_scores(lut4, lut4_scale, lut4_bias, GROUP, 64, blocks[h], TOKENS, scores[thread],
                    TOKENS);
    else
      t->pq_scores_x4_u8(lut8, 32, 256, codes8[h], TOKENS, scores[thread]);
  }
}

static void *thread_main(void *arg) {
  run_job(arg, 1);
  return NULL;
}

// Best time of REPEATS for the codec over `threads` threads splitting heads (or the scan).
static double best_time(int codec, int threads) {
  double best = 1e9;
  for (int r = 0; r < REPEATS; r++) {
    size_t total = codec == 0 ? scan_floats : KV_HEADS;
    job a = {codec, 0, threads == 2 ? total / 2 : total};
    job b = {codec, total / 2, total / 2};
    double t0 = now();
    pthread_t other;
    if (threads == 2) pthread_create(&other, NULL, thread_main, &b);
    run_job(&a, 0);
    if (threads == 2) pthread_join(other, NULL);
    double t = now() - t0;
    best = t < best ? t : best;
  }
  return best;
}

int main(void) {
  srand(7);
  scan_floats = (size_t)256 << 20;
  scan_data = malloc(scan_floats * sizeof(float));
  for (size_t i = 0; i < scan_floats; i++) scan_data[i] = 1;
  uint16_t centroids[64 * 16 * 2];
  for (size_t i = 0; i < 64 * 16 * 2; i++) {
    _Float16 v = (_Float16)((float)rand() / RAND_MAX - 0.5f);
    memcpy(&centroids[i], &v, 2);
  }
  float q[GROUP * DIM];
  for (size_t i = 0; i < GROUP * DIM; i++) q[i] = (float)rand() / RAND_MAX - 0.5f;
  lut4 = malloc(GROUP * 64 * 16);
  hkv_pq4_lut(centroids, 64, 16, 2, q, GROUP, lut4, lut4_scale, lut4_bias);
  lut8 = malloc(sizeof(float) * 32 * 256 * 4);
  for (size_t i = 0; i < 32 * 256 * 4; i++) lut8[i] = (float)rand() / RAND_MAX;
  size_t block_bytes = TOKENS / 32 * hkv_pq4_block_bytes(64);
  for (int h = 0; h < KV_HEADS; h++) {
    blocks[h] = malloc(block_bytes);
    codes8[h] = malloc((size_t)TOKENS * 32);
    for (size_t i = 0; i < block_bytes; i++) blocks[h][i] = (uint8_t)rand();
    for (size_t i = 0; i < (size_t)TOKENS * 32; i++) codes8[h][i] = (uint8_t)rand();
  }
  for (int t = 0; t < 2; t++) scores[t] = malloc(sizeof(float) * GROUP * TOKENS);
  double code_bytes = (double)KV_HEADS * block_bytes;
  printf("vectorized kernels: %d\n", hkv_kernels_vectorized());
  for (int threads = 1; threads <= 2; threads++) {
    double scan = (double)scan_floats * 4 / best_time(0, threads);
    double t4 = best_time(1, threads), t8 = best_time(2, threads);
    printf("%d thread(s): scan %.2f GB/s | 4-bit fast scan %.2f ms, %.2f GB/s, %.2f of scan | "
           "one-byte PQ c=256 %.2f ms, %.2f GB/s, %.2f of scan | fast scan %.2fx\n",
           threads, scan / 1e9, t4 * 1e3, code_bytes / t4 / 1e9, code_bytes / t4 / scan, t8 * 1e3,
           code_bytes / t8 / 1e9, code_bytes / t8 / scan, t8 / t4);
  }
  return 0;
}
