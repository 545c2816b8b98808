// Tau-mass selection of one GQA group against the scoring that feeds it (4-bit fast scan and
// one-byte PQ codes, 32 bytes a token each), straight on the kernel sources (the goal:
// selection at most a quarter of scoring).
//
//   K=Sources/CHeteroKVKernels
//   clang -O2 -pthread -Wno-nullability-completeness -Wno-implicit-const-int-float-conversion -I$K/include -I$K Benchmarks/c/select_bench.c \
//     $K/portable.c $K/avx2_coded.c $K/avx2_dense.c $K/dispatch.c $K/dense.c $K/rows.c -lm \
//     -o /tmp/select_bench && /tmp/select_bench
//
// Llama-3-8B geometry, one KV head: 4 query heads x dim 128 over 32K, 128K and 1M tokens. The
// scores are what a decode step sees (a shared part across the group plus each head's own, in
// nats, with four sinks far above the rest); the spread sets how many tokens hold tau. Best of 7
// (or of the repeats given as the first argument; a context length as the second runs it alone).

#include "hkv_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { GROUP = 4, REPEATS = 7 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// A standard normal draw (Box-Muller over rand()).
static float gaussian(void) {
  float u = (rand() + 1.0f) / (RAND_MAX + 2.0f);
  float v = (rand() + 1.0f) / (RAND_MAX + 2.0f);
  return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}

int main(int argc, char **argv) {
  // An optional count of selection repeats (for a profiler; scoring keeps its own).
  int repeats = argc > 1 ? atoi(argv[1]) : REPEATS;
  srand(11);
  printf("vectorized kernels: %d\n", hkv_kernels_vectorized());
  const size_t lengths[] = {32768, 131072, 1048576};
  const float spreads[] = {1.0f, 1.5f, 2.5f};
  // An optional context length, run alone.
  size_t only = argc > 2 ? (size_t)atol(argv[2]) : 0;
  for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
    size_t n = lengths[li];
    if (only && n != only) continue;
    // Scoring: the 4-bit fast scan of one KV head's n tokens for its 4 query heads.
    uint16_t centroids[64 * 16 * 2];
    for (size_t i = 0; i < 64 * 16 * 2; i++) {
      _Float16 v = (_Float16)((float)rand() / RAND_MAX - 0.5f);
      memcpy(&centroids[i], &v, 2);
    }
    float q[GROUP * 128];
    for (size_t i = 0; i < GROUP * 128; i++) q[i] = (float)rand() / RAND_MAX - 0.5f;
    uint8_t *lut = malloc(GROUP * 64 * 16);
    float step[GROUP], bias[GROUP];
    hkv_pq4_lut(centroids, 64, 16, 2, q, GROUP, lut, step, bias);
    size_t block_bytes = (n + 31) / 32 * hkv_pq4_block_bytes(64);
    uint8_t *blocks = malloc(block_bytes);
    for (size_t i = 0; i < block_bytes; i++) blocks[i] = (uint8_t)rand();
    float *scored = malloc(sizeof(float) * GROUP * n);
    double scoring = 1e9;
    for (int r = 0; r < REPEATS; r++) {
      double t0 = now();
      hkv_pq4_scores(lut, step, bias, GROUP, 64, blocks, n, scored, n);
      double t = now() - t0;
      scoring = t < scoring ? t : scoring;
    }
    // And the one-byte PQ codes of the same size (32 sub-spaces of 4 dims, 256 centroids).
    float *lut8 = malloc(sizeof(float) * 32 * 256 * 4);
    for (size_t i = 0; i < 32 * 256 * 4; i++) lut8[i] = (float)rand() / RAND_MAX;
    uint8_t *codes8 = malloc(n * 32);
    for (size_t i = 0; i < n * 32; i++) codes8[i] = (uint8_t)rand();
    double scoring8 = 1e9;
    for (int r = 0; r < REPEATS; r++) {
      double t0 = now();
      hkv_pq_scores_x4_u8(lut8, 32, 256, codes8, n, scored);
      double t = now() - t0;
      scoring8 = t < scoring8 ? t : scoring8;
    }
    free(lut8);
    free(codes8);
    for (size_t si = 0; si < sizeof spreads / sizeof *spreads; si++) {
      float *scores = malloc(sizeof(float) * GROUP * n);
      float *shared = malloc(sizeof(float) * n);
      for (size_t j = 0; j < n; j++) shared[j] = spreads[si] * gaussian();
      for (size_t h = 0; h < GROUP; h++)
        for (size_t j = 0; j < n; j++)
          scores[h * n + j] = shared[j] + spreads[si] * gaussian() + (j < 4 ? 6.0f : 0.0f);
      int32_t *indices = malloc(sizeof(int32_t) * n);
      float *weights = malloc(sizeof(float) * GROUP * n);
      float mass[GROUP], log_z[GROUP];
      double best = 1e9;
      size_t kept = 0;
      for (int r = 0; r < repeats; r++) {
        double t0 = now();
        kept = hkv_tau_select_group(scores, GROUP, n, 0.9f, 0, indices, weights, mass, log_z);
        double t = now() - t0;
        best = t < best ? t : best;
      }
      printf("%7zu tokens, spread %.1f nats: scoring 4-bit %.3f ms, one-byte %.3f ms | group "
             "selection (tau 0.9) %.3f ms, %.2f of 4-bit, %.2f of one-byte, %.2f ns a score | "
             "kept %.1f%%, head 0 mass %.4f\n",
             n, spreads[si], scoring * 1e3, scoring8 * 1e3, best * 1e3, best / scoring,
             best / scoring8, best * 1e9 / (GROUP * n), 100.0 * kept / n, mass[0]);
      free(scores);
      free(shared);
      free(indices);
      free(weights);
    }
    free(lut);
    free(blocks);
    free(scored);
  }
  return 0;
}
