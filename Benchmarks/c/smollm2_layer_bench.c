// One SmolLM2-135M layer's decode attention on one thread, full against HeteroKV's worker side,
// straight on the kernel sources: what bounds `hkv-model-bench` at 8K-32K tokens, measured
// without the end-to-end run's noise (on this VM the full cache's own rate moves 25-50 tok/s
// between runs).
//
//   K=Sources/CHeteroKVKernels
//   clang -O2 -pthread -Wno-nullability-completeness -I$K/include -I$K \
//     Benchmarks/c/smollm2_layer_bench.c $K/portable.c $K/avx2_coded.c $K/avx2_dense.c \
//     $K/avx512_coded.c $K/dispatch.c $K/dense.c $K/rows.c -lm -o /tmp/smollm2_layer_bench && \
//     /tmp/smollm2_layer_bench
//
// SmolLM2 geometry: 3 KV heads of dim 64, 3 query heads each. Full: scores from fp16 keys,
// softmax, weighted sum of fp16 values (what FullKVCache does per layer). Worker, one-byte
// codes: the query table (256 centroids x 16 sub-spaces of 4 dims) and scores for the group;
// worker, finer one-byte codes (256 centroids x 32 sub-spaces of 2 dims: what hcattention
// buys for most heads with what a 12.5% budget leaves over the coarse codes); worker, 4-bit codes: the byte table (16 centroids x 32 sub-spaces of 2 dims) and the fast
// scan; the same one-byte codes in 64-token blocks scored from byte tables (hkv_pq8_scores:
// register lookups on AVX-512 VBMI, else the portable loop); then the group's tau selection (0.985) over scores shaped like a decode step's (a shared
// part, each head's own, four sinks far above). Eight layers' data in turn, so K/V and codes
// come from memory as in a decode step, not from cache. Best of 9 passes over the 8 layers,
// per layer (3 KV heads).

#include "hkv_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { KV = 3, GROUP = 3, D = 64, LAYERS = 8, PASSES = 9 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static float gaussian(void) {
  float u = (rand() + 1.0f) / ((float)RAND_MAX + 2.0f);
  float v = (rand() + 1.0f) / ((float)RAND_MAX + 2.0f);
  return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}

static uint16_t half(float x) {
  _Float16 h = (_Float16)x;
  uint16_t bits;
  memcpy(&bits, &h, 2);
  return bits;
}

static void *must(size_t bytes) {
  void *p = malloc(bytes);
  if (!p) {
    fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
    exit(1);
  }
  return p;
}

int main(void) {
  srand(5);
  printf("vectorized kernels: %d; per layer (3 KV heads x 3 query heads, dim 64), one thread, us\n",
         hkv_kernels_vectorized());
  printf("byte tables looked up in registers: %d\n", hkv_pq8_lookups_in_registers());
  printf("tokens   full   select   1-byte/4 dims  worker/full   1-byte/2 dims  worker/full   4-bit/2 dims  worker/full"
         "   bytes/4 dims  worker/full   bytes/2 dims  worker/full\n");
  const size_t lengths[] = {8000, 16000, 32000};
  float q[GROUP * D], out[GROUP * D];
  for (size_t i = 0; i < GROUP * D; i++) q[i] = gaussian() * 0.3f;
  uint16_t centroids8[16 * 256 * 4], centroids4[32 * 16 * 2], centroids2[32 * 256 * 2];
  for (size_t i = 0; i < sizeof centroids8 / 2; i++) centroids8[i] = half(gaussian());
  for (size_t i = 0; i < sizeof centroids4 / 2; i++) centroids4[i] = half(gaussian());
  for (size_t i = 0; i < sizeof centroids2 / 2; i++) centroids2[i] = half(gaussian());
  float *lut8 = must(32 * 256 * 4 * sizeof(float));
  uint8_t lut4[GROUP * 32 * 16], lutb[GROUP * 32 * 256];
  float *scratch = must(4 * 32 * 256 * sizeof(float));
  float step[GROUP], bias[GROUP], mass[GROUP], lse[GROUP];
  for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
    size_t n = lengths[li];
    uint16_t *keys[LAYERS][KV], *values[LAYERS][KV];
    uint8_t *codes8[LAYERS][KV], *codes2[LAYERS][KV], *blocks[LAYERS][KV];
    uint8_t *blocked8[LAYERS][KV], *blocked2[LAYERS][KV];
    size_t block_bytes = (n + 31) / 32 * hkv_pq4_block_bytes(32);
    uint16_t *raw = must(n * 32 * sizeof(uint16_t));
    size_t pq8_blocks = (n + 63) / 64;
    for (int l = 0; l < LAYERS; l++)
      for (int h = 0; h < KV; h++) {
        keys[l][h] = must(n * D * 2);
        values[l][h] = must(n * D * 2);
        for (size_t i = 0; i < n * D; i++) {
          keys[l][h][i] = half(gaussian());
          values[l][h][i] = half(gaussian());
        }
        codes8[l][h] = must(n * 16);
        for (size_t i = 0; i < n * 16; i++) codes8[l][h][i] = (uint8_t)rand();
        codes2[l][h] = must(n * 32);
        for (size_t i = 0; i < n * 32; i++) codes2[l][h][i] = (uint8_t)rand();
        blocked8[l][h] = calloc(pq8_blocks * hkv_pq8_block_bytes(16), 1);
        for (size_t i = 0; i < n * 16; i++) raw[i] = codes8[l][h][i];
        hkv_pq8_pack(raw, n, 16, 0, blocked8[l][h]);
        blocked2[l][h] = calloc(pq8_blocks * hkv_pq8_block_bytes(32), 1);
        for (size_t i = 0; i < n * 32; i++) raw[i] = codes2[l][h][i];
        hkv_pq8_pack(raw, n, 32, 0, blocked2[l][h]);
        blocks[l][h] = calloc(block_bytes, 1);
        for (size_t i = 0; i < n * 32; i++) raw[i] = (uint16_t)(rand() & 15);
        hkv_pq4_pack(raw, n, 32, 0, blocks[l][h]);
      }
    free(raw);
    // Scores as a decode step sees them (the selection's cost depends on their shape).
    float *shaped = must(GROUP * n * sizeof(float)), *scores = must(4 * n * sizeof(float));
    float *weights = must(GROUP * n * sizeof(float));
    int32_t *kept = must(n * sizeof(int32_t));
    for (size_t j = 0; j < n; j++) {
      float shared = gaussian() * 1.5f;
      for (int h = 0; h < GROUP; h++)
        shaped[h * n + j] = (j < 4 ? 12.0f : 0.0f) + shared + gaussian() * 0.75f;
    }
    double best[7] = {1e9, 1e9, 1e9, 1e9, 1e9, 1e9, 1e9};
    size_t kept_count = 0;
    for (int pass = 0; pass < PASSES; pass++) {
      double t[7] = {0};
      for (int l = 0; l < LAYERS; l++) {
        double t0 = now();
        for (int h = 0; h < KV; h++) {
          hkv_scores_f16(q, GROUP, keys[l][h], n, D, 0.125f, scores);
          float top;
          for (int g = 0; g < GROUP; g++) {
            float sum = hkv_softmax_exp(scores + g * n, n, &top);
            for (size_t j = 0; j < n; j++) scores[g * n + j] /= sum;
          }
          memset(out, 0, sizeof out);
          hkv_weighted_sum_dense_f16(values[l][h], n, D, scores, GROUP, out);
        }
        double t1 = now();
        for (int h = 0; h < KV; h++) {
          hkv_pq_lut_x4(centroids8, 16, 256, 4, q, GROUP, lut8);
          hkv_pq_scores_x4_u8(lut8, 16, 256, codes8[l][h], n, scores);
        }
        double t2 = now();
        for (int h = 0; h < KV; h++)
          kept_count = hkv_tau_select_group(shaped, GROUP, n, 0.985f, 0, kept, weights, mass, lse);
        double t3 = now();
        for (int h = 0; h < KV; h++) {
          hkv_pq4_lut(centroids4, 32, 16, 2, q, GROUP, lut4, step, bias);
          hkv_pq4_scores(lut4, step, bias, GROUP, 32, blocks[l][h], n, scores, n);
        }
        double t4 = now();
        for (int h = 0; h < KV; h++) {
          hkv_pq_lut_x4(centroids2, 32, 256, 2, q, GROUP, lut8);
          hkv_pq_scores_x4_u8(lut8, 32, 256, codes2[l][h], n, scores);
        }
        double t5 = now();
        for (int h = 0; h < KV; h++) {
          hkv_pq8_lut(centroids8, 16, 256, 4, q, GROUP, scratch, lutb, step, bias);
          hkv_pq8_scores(lutb, step, bias, GROUP, 16, blocked8[l][h], n, scores, n);
        }
        double t6 = now();
        for (int h = 0; h < KV; h++) {
          hkv_pq8_lut(centroids2, 32, 256, 2, q, GROUP, scratch, lutb, step, bias);
          hkv_pq8_scores(lutb, step, bias, GROUP, 32, blocked2[l][h], n, scores, n);
        }
        double t7 = now();
        t[5] += t6 - t5;
        t[6] += t7 - t6;
        t[4] += t5 - t4;
        t[0] += t1 - t0;
        t[1] += t2 - t1;
        t[2] += t3 - t2;
        t[3] += t4 - t3;
      }
      for (int k = 0; k < 7; k++)
        if (t[k] / LAYERS < best[k]) best[k] = t[k] / LAYERS;
    }
    double full = best[0] * 1e6, s8 = best[1] * 1e6, sel = best[2] * 1e6, s4 = best[3] * 1e6;
    double s2 = best[4] * 1e6, b8 = best[5] * 1e6, b2 = best[6] * 1e6;
    printf("%6zu %6.0f %8.0f  %13.0f  %11.2f  %14.0f  %11.2f  %13.0f  %11.2f  %13.0f  %11.2f  %13.0f  %11.2f"
           "   (kept %zu of %zu)\n",
           n, full, sel, s8, (s8 + sel) / full, s2, (s2 + sel) / full, s4, (s4 + sel) / full, b8,
           (b8 + sel) / full, b2, (b2 + sel) / full, kept_count, n);
    for (int l = 0; l < LAYERS; l++)
      for (int h = 0; h < KV; h++) {
        free(keys[l][h]);
        free(values[l][h]);
        free(codes8[l][h]);
        free(codes2[l][h]);
        free(blocks[l][h]);
        free(blocked8[l][h]);
        free(blocked2[l][h]);
      }
    free(shaped);
    free(scores);
    free(weights);
    free(kept);
  }
  free(lut8);
  free(scratch);
  return 0;
}
