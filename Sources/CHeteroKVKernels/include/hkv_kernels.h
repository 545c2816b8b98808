#ifndef HKV_KERNELS_H
#define HKV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Every pointer in this header is non-null unless marked _Nullable (Swift sees the others as
// non-optional pointers).
#pragma clang assume_nonnull begin

/// 1 when the AVX2 + FMA + F16C kernels (or the AVX-512 set built on them) are in use, 0 for
/// the portable fallback. The set in use is the best the CPU has, capped by the environment
/// variable HKV_KERNELS (`portable`, `avx2` or `avx512`), read once per process.
int hkv_kernels_vectorized(void);

/// One complete set of kernel implementations. The hkv_* functions below call the set in use;
/// a caller that wants a particular one (a parity check, a benchmark of both) calls through
/// its table, per call, without changing what anyone else runs. Same contracts as the hkv_*
/// function of the same name.
typedef struct hkv_kernel_table {
  /// 1 for the AVX2 + FMA + F16C set (and the AVX-512 one built on it), 0 for the portable one.
  int vectorized;
  void (*f16_to_f32)(const uint16_t *src, float *dst, size_t n);
  void (*f32_to_f16)(const float *src, uint16_t *dst, size_t n);
  void (*scores_f16)(const float *q, size_t heads, const uint16_t *keys, size_t n, size_t d,
                     float scale, float *scores);
  void (*weighted_sum_dense_f16)(const uint16_t *values, size_t n, size_t d, const float *probs,
                                 size_t heads, float *out);
  void (*weighted_sum_sparse_multi_f16)(const uint16_t *values, size_t d, const int32_t *indices,
                                        const float *weights, size_t count, size_t heads,
                                        float *out);
  void (*scores_f16_rows)(const float *q, size_t heads, const uint16_t *_Nullable const *_Nonnull rows, size_t n,
                          size_t d, float scale, float *scores);
  void (*weighted_sum_rows_f16)(const uint16_t *_Nullable const *_Nonnull rows, size_t n, size_t d,
                                const float *probs, size_t heads, float *out);
  void (*pq_scores_x4)(const float *lut, size_t g, size_t c, const uint16_t *codes, size_t n,
                       float *scores);
  void (*pq_scores_x4_u8)(const float *lut, size_t g, size_t c, const uint8_t *codes, size_t n,
                          float *scores);
  void (*pq_lut_x4)(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                    size_t heads, float *lut);
  void (*pq4_scores)(const uint8_t *lut, const float *lut_scale, const float *lut_bias,
                     size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores,
                     size_t stride);
  void (*pq8_scores)(const uint8_t *lut, const float *lut_scale, const float *lut_bias,
                     size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores,
                     size_t stride);
  void (*pq8_lut)(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                  size_t heads, float *scratch, uint8_t *lut, float *lut_scale, float *lut_bias);
  void (*sq4_scores)(const float *qs, const float *bias, size_t heads, const uint8_t *codes,
                     size_t n, size_t d, float scale, float *scores, size_t stride);
  void (*sq_group_scores)(const float *q, size_t heads, const uint8_t *codes,
                          const uint16_t *scales, const uint16_t *zeros, size_t groups,
                          size_t group_size, size_t d, size_t bits, float scale, float *scores,
                          size_t stride);
  void (*nearest_centroids)(const float *points, size_t n, size_t stride, size_t s,
                            const float *centroids, const float *norms, size_t c,
                            uint16_t *codes, size_t code_stride);
  float (*softmax_exp)(float *x, size_t n, float *max_out);
  float (*softmax_exp_chunked)(const float *x, size_t n, float *w, float *chunk_max,
                               float *max_out);
  uint16_t (*group_mean_buckets)(const float *w, size_t heads, size_t n, const float *coef,
                                 int32_t top_bucket, float *mean, uint16_t *bucket);
  size_t (*keep_compress)(const uint16_t *bucket, size_t n, uint16_t boundary, float *w,
                          size_t heads, const float *coef, int32_t *indices, float *kept_mass);
  double (*scan_sum_f32)(const float *x, size_t n);
  uint32_t (*crc32c)(uint32_t crc, const void *data, size_t n);
  void (*matmul_rows_f32)(const float *x, size_t tokens, size_t in, const float *w, size_t rows,
                          float *y, size_t y_stride);
  void (*matmul_rows_quantized)(const float *x, size_t tokens, size_t in, const void *w,
                                int type, size_t rows, float *y, size_t y_stride);
} hkv_kernel_table;

/// The portable C kernels: available everywhere.
const hkv_kernel_table *hkv_kernels_portable(void);

/// The AVX2 + FMA + F16C kernels, or NULL where the CPU (or the build) lacks them.
const hkv_kernel_table *_Nullable hkv_kernels_avx2(void);

/// The AVX2 set with the kernels AVX-512 (F, BW, VBMI) makes faster (one-byte codes scored from
/// byte tables in registers), or NULL where the CPU (or the build) lacks them. In use where it
/// exists.
const hkv_kernel_table *_Nullable hkv_kernels_avx512(void);

/// Converts IEEE half-precision bit patterns to single precision.
void hkv_f16_to_f32(const uint16_t *src, float *dst, size_t n);
/// Converts single precision to half precision (round to nearest even).
void hkv_f32_to_f16(const float *src, uint16_t *dst, size_t n);

/// scores[h * n + j] = scale * dot(q[h], keys[j]) for h < heads, j < n.
/// q is [heads][d] fp32, keys [n][d] fp16.
void hkv_scores_f16(const float *q, size_t heads, const uint16_t *keys, size_t n, size_t d,
                    float scale, float *scores);

/// out[h][:] += sum_j probs[h * n + j] * values[j][:] over all n rows (dense).
void hkv_weighted_sum_dense_f16(const uint16_t *values, size_t n, size_t d, const float *probs,
                                size_t heads, float *out);

/// out[h][:] += sum_k weights[h * count + k] * values[indices[k]][:] for every head: the rows
/// of a query group's kept sets (their union) are each read once.
void hkv_weighted_sum_sparse_multi_f16(const uint16_t *values, size_t d, const int32_t *indices,
                                       const float *weights, size_t count, size_t heads,
                                       float *out);

/// scores[h * n + j] = scale * q[h] · rows[j] for fp16 rows reached through pointers (rows in
/// place in a memory node's pages: no copy into a contiguous matrix first). Each row is read
/// once for every head.
void hkv_scores_f16_rows(const float *q, size_t heads, const uint16_t *_Nullable const *_Nonnull rows, size_t n,
                         size_t d, float scale, float *scores);

/// out[h] += Σ_j probs[h * n + j] · rows[j] over fp16 rows reached through pointers; each row
/// read once for every head.
void hkv_weighted_sum_rows_f16(const uint16_t *_Nullable const *_Nonnull rows, size_t n, size_t d,
                               const float *probs, size_t heads, float *out);

/// Product-quantization scores from a lookup table.
/// lut is [g][c][4] fp32 (four query heads interleaved; pad unused heads with 0),
/// codes [n][g] uint16, scores [4][n]: scores[h*n+j] = sum_i lut[i][codes[j][i]][h].
void hkv_pq_scores_x4(const float *lut, size_t g, size_t c, const uint16_t *codes, size_t n,
                      float *scores);

/// hkv_pq_scores_x4 on one-byte codes (codebooks of at most 256 centroids).
void hkv_pq_scores_x4_u8(const float *lut, size_t g, size_t c, const uint8_t *codes, size_t n,
                         float *scores);

/// Builds the lookup table for hkv_pq_scores_x4: lut[i][m][h] = q[h][i*s:(i+1)*s] · C[i][m]
/// for heads h < `heads` (<= 4; the other lanes are set to 0). centroids are fp16 [g][c][s],
/// q is [heads][g*s] fp32.
void hkv_pq_lut_x4(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                   size_t heads, float *lut);

/// Tokens per block of 4-bit product-quantization codes (hkv_pq4_scores' layout).
enum { HKV_PQ4_BLOCK = 32 };

/// Sub-spaces a 4-bit code layout holds for g sub-spaces: g rounded up to even (codes pair up
/// in bytes; the odd one out pairs with a sub-space whose code and table are zero).
static inline size_t hkv_pq4_subspaces(size_t g) { return (g + 1) & ~(size_t)1; }

/// Bytes of one block of 32 tokens' 4-bit codes over g sub-spaces.
static inline size_t hkv_pq4_block_bytes(size_t g) { return hkv_pq4_subspaces(g) / 2 * 32; }

/// Where token t's code for sub-space i lives in 4-bit blocks: the byte offset (its nibble is
/// the low one for even i, the high one for odd i). Within a block, pair p = i / 2 holds 32
/// bytes; token k < 16 is byte 2k and token 16 + k byte 2k + 1, so that 16-bit lanes of the
/// fast-scan sums hold tokens in order.
static inline size_t hkv_pq4_code_offset(size_t g, size_t t, size_t i) {
  size_t k = t % 32;
  return t / 32 * hkv_pq4_block_bytes(g) + i / 2 * 32 + (k < 16 ? 2 * k : 2 * (k - 16) + 1);
}

/// The quantized lookup table of 4-bit product quantization (c <= 16 centroids), for
/// hkv_pq4_scores: per head h and sub-space i the centroid scores q[h]_i · C[i][m], as bytes
/// lut[(h * G + i) * 16 + m] (G = hkv_pq4_subspaces(g); padding sub-spaces are 0) with one
/// step per head: score ≈ lut_bias[h] + lut_scale[h] * Σ_i lut[h][i][code_i]. The step is the
/// widest sub-space's score range over 255, and each entry errs by at most half a step (7-bit
/// entries, whose pairs add without carrying, ran the kernel 10-15% faster and raised the score
/// error of the kept sets by 10% on real keys: not taken).
/// Entries past c are 0. centroids are fp16 [g][c][s], q is [heads][g*s] fp32; g <= 256 and
/// c <= 16 (else nothing is written).
void hkv_pq4_lut(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                 size_t heads, uint8_t *lut, float *lut_scale, float *lut_bias);

/// Packs `rows` tokens of 4-bit codes ([rows][g], each below 16) into blocks as tokens first,
/// first + 1, ...: ORs each code into its nibble (hkv_pq4_code_offset), so the bytes they land
/// in must be zero, and blocks must hold every block those tokens reach.
void hkv_pq4_pack(const uint16_t *codes, size_t rows, size_t g, size_t first, uint8_t *blocks);

/// Fast-scan scores from 4-bit product-quantization codes in blocks of 32 tokens (layout:
/// hkv_pq4_code_offset) and the byte table of hkv_pq4_lut: the table of a sub-space sits in a
/// register and one byte shuffle looks up 32 tokens, so the kernel reads codes at memory speed
/// instead of chasing one table line per code. Integer sums are exact (g <= 256), so the AVX2 and
/// portable kernels agree bit for bit. scores[h * stride + j] for h < heads, j < n.
void hkv_pq4_scores(const uint8_t *lut, const float *lut_scale, const float *lut_bias,
                    size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores,
                    size_t stride);

/// Tokens per block of one-byte product-quantization codes scored from byte tables
/// (hkv_pq8_scores' layout).
enum { HKV_PQ8_BLOCK = 64 };

/// Bytes of one block of 64 tokens' one-byte codes over g sub-spaces.
static inline size_t hkv_pq8_block_bytes(size_t g) { return g * 64; }

/// Where token t's one-byte code for sub-space i lives in blocks of 64 tokens: sub-space i of a
/// block holds 64 bytes, token k < 32 at byte 2k and token 32 + k at byte 2k + 1, so that the
/// 16-bit lanes of the kernel's sums hold tokens in order.
static inline size_t hkv_pq8_code_offset(size_t g, size_t t, size_t i) {
  size_t k = t % 64;
  return t / 64 * hkv_pq8_block_bytes(g) + i * 64 + (k < 32 ? 2 * k : 2 * (k - 32) + 1);
}

/// Writes `rows` tokens of one-byte codes ([rows][g], each below 256) into blocks as tokens
/// first, first + 1, ... (hkv_pq8_code_offset); blocks must hold every block they reach.
void hkv_pq8_pack(const uint16_t *codes, size_t rows, size_t g, size_t first, uint8_t *blocks);

/// The quantized lookup table of one-byte product quantization (c <= 256 centroids), for
/// hkv_pq8_scores: per head h and sub-space i the centroid scores q[h]_i · C[i][m] as bytes
/// lut[(h * g + i) * 256 + m], with one step per head: score ≈ lut_bias[h] + lut_scale[h] *
/// Σ_i lut[h][i][code_i]. The step is the widest sub-space's range over 255 and each entry errs
/// by at most half a step (hkv_pq4_lut's rule). Entries past c are 0. centroids are fp16
/// [g][c][s], q is [heads][g*s] fp32; `scratch` holds 4 * g * 256 floats (the float entries of
/// four heads at a time). Each entry is q_0 c_0 then fused multiply-adds over the sub-space's
/// coordinates in order, so every kernel writes the same bytes. g <= 256 and c <= 256 (else
/// nothing is written).
void hkv_pq8_lut(const uint16_t *centroids, size_t g, size_t c, size_t s, const float *q,
                 size_t heads, float *scratch, uint8_t *lut, float *lut_scale, float *lut_bias);

/// Scores from one-byte product-quantization codes in blocks of 64 tokens (layout:
/// hkv_pq8_code_offset) and the byte table of hkv_pq8_lut. With AVX-512 VBMI a sub-space's
/// 256-entry table sits in four registers and two two-register byte permutes look up 64 tokens,
/// instead of one table load per code from a table larger than L1. Integer sums are exact
/// (g <= 256), so every kernel agrees bit for bit. scores[h * stride + j] for h < heads, j < n.
void hkv_pq8_scores(const uint8_t *lut, const float *lut_scale, const float *lut_bias,
                    size_t heads, size_t g, const uint8_t *blocks, size_t n, float *scores,
                    size_t stride);

/// 1 when the kernels in use look one-byte codes up in registers (hkv_pq8_scores on AVX-512
/// VBMI): then blocked codes and byte tables score several times faster than a float table;
/// elsewhere the float table is faster, so a key store picks its layout by this.
int hkv_pq8_lookups_in_registers(void);

/// Scalar 4-bit key scores for one group of tokens quantized per channel.
/// qs is [heads][d] (query already multiplied by the group's per-channel scale),
/// bias[h] the query dotted with the group's zero points; packed codes [n][d/2] where byte b
/// holds channel b in its low nibble and channel b + d/2 in its high nibble.
/// scores[h * stride + j] = scale * (bias[h] + sum_c qs[h][c] * code[j][c]).
void hkv_sq4_scores(const float *qs, const float *bias, size_t heads, const uint8_t *codes,
                    size_t n, size_t d, float scale, float *scores, size_t stride);

/// Nearest centroid of each point for one product-quantization sub-space.
/// points: n rows with `stride` floats between rows, `s` dims each; centroids structure-of-
/// arrays [s][c] with their squared norms [c]. Writes the index of the nearest centroid of
/// point j to codes[j * code_stride].
void hkv_nearest_centroids(const float *points, size_t n, size_t stride, size_t s,
                           const float *centroids, const float *norms, size_t c,
                           uint16_t *codes, size_t code_stride);

/// hkv_nearest_centroids over centroids array-of-structures [c][s], fp16 as a codebook stores
/// them or float as k-means trains them: the structure-of-arrays table and norms are built in
/// thread-local scratch, so coding a decode step's few keys allocates nothing and keeps no
/// float copy of the codebook. Returns 0, or -1 when the scratch could not be allocated
/// (codes untouched).
int hkv_nearest_centroids_f16(const float *points, size_t n, size_t stride, size_t s,
                              const uint16_t *centroids, size_t c, uint16_t *codes,
                              size_t code_stride);
int hkv_nearest_centroids_aos(const float *points, size_t n, size_t stride, size_t s,
                              const float *centroids, size_t c, uint16_t *codes,
                              size_t code_stride);

/// In place: x[i] = exp(x[i] - max(x)); stores the max in *max_out and returns the sum.
/// An empty or all -inf input returns 0 and leaves x unchanged.
float hkv_softmax_exp(float *x, size_t n, float *max_out);

/// Tokens per chunk of hkv_softmax_exp_chunked: a chunk's scores are read from memory once and
/// from L1 for their exps.
enum { HKV_SELECT_CHUNK = 512 };

/// Softmax numerators in one pass over x, chunk by chunk against the running maximum: w[j] =
/// exp(x[j] - chunk_max[j / HKV_SELECT_CHUNK]), where chunk_max[c] is the maximum of x over
/// chunks 0...c. Stores the maximum of x in *max_out and returns Σ exp(x - max) (0 for an empty
/// or all -inf input; NaN when x holds a NaN or +inf). A weight over the final maximum is
/// w[j] * exp(chunk_max[c] - max).
float hkv_softmax_exp_chunked(const float *x, size_t n, float *w, float *chunk_max,
                              float *max_out);

/// A GQA group's mean weight and its bucket, from `heads` rows of n chunked numerators w
/// ([heads][n], hkv_softmax_exp_chunked) and per head and chunk a coefficient coef[h * chunks +
/// c] (chunks = n / HKV_SELECT_CHUNK rounded up): mean[j] = Σ_h w[h][j] * coef[h][c]. The
/// bucket is top_bucket - (float bits of mean[j] >> 17), clamped to 0...4095: 64 buckets an
/// octave, counted down from top_bucket. Returns the largest bucket written.
uint16_t hkv_group_mean_buckets(const float *w, size_t heads, size_t n, const float *coef,
                                int32_t top_bucket, float *mean, uint16_t *bucket);

/// The bucket value of a boundary token taken into a tau-mass set (hkv_keep_compress).
enum { HKV_TAU_TAKEN = 0xFFFF };

/// A selection's kept tokens, ascending: every j whose bucket[j] is below `boundary` or is
/// HKV_TAU_TAKEN, written to indices (room for n). Their weights, in place: row h of w
/// ([heads][n]) begins with w[h][j] * coef[h][c] of the kept j (c = j / HKV_SELECT_CHUNK, coef
/// as in hkv_group_mean_buckets), and kept_mass[h] is their sum. Returns the kept count.
size_t hkv_keep_compress(const uint16_t *bucket, size_t n, uint16_t boundary, float *w,
                         size_t heads, const float *coef, int32_t *indices, float *kept_mass);

/// Scalar key scores for codes of `bits` (2, 4 or 8) bits, packed so that byte b of a token
/// holds channels b + k * (d * bits / 8) for k < 8 / bits at bit offset k * bits. Same
/// arguments as hkv_sq4_scores otherwise.
void hkv_sq_scores(const float *qs, const float *bias, size_t heads, const uint8_t *codes,
                   size_t n, size_t d, size_t bits, float scale, float *scores, size_t stride);

/// Scores of `groups` consecutive quantized groups of `group_size` tokens each: per group the
/// fp16 per-channel scales and zero points ([groups][d] each) are folded into the query once
/// (q·s per channel, plus the bias q·z), then hkv_sq_scores runs over the group's codes.
/// q is [heads][d]; scores[h * stride + token].
void hkv_sq_group_scores(const float *q, size_t heads, const uint8_t *codes,
                         const uint16_t *scales, const uint16_t *zeros, size_t groups,
                         size_t group_size, size_t d, size_t bits, float scale, float *scores,
                         size_t stride);

/// HCAttention's tau-mass selection over one head's scaled scores: the smallest set of tokens,
/// taken in descending softmax weight, whose mass reaches tau (optionally at most `cap`;
/// 0 = no cap). Writes the kept indices ascending and their softmax weights over all n tokens
/// (indices and weights need room for n), the kept mass to *kept_mass and log Σ exp(scores) to
/// *log_normalizer (when not NULL); returns the kept count, or 0 when the scores have no finite
/// maximum or allocation fails.
size_t hkv_tau_select(const float *scores, size_t n, float tau, size_t cap, int32_t *indices,
                      float *weights, float *kept_mass, float *_Nullable log_normalizer);

/// One tau-mass selection for a GQA group of `heads` query heads (at most 64) over their
/// scaled scores [heads][n]: the smallest set, in descending mean softmax probability over the
/// heads, whose mean mass reaches tau (optionally at most `cap`). Writes the kept indices
/// ascending (room for n), each head's own softmax weights of the kept tokens to
/// weights[h * kept + k] (room for heads * n), each head's kept mass and log Σ exp(scores);
/// returns the kept count, or 0 when some head's scores have no finite maximum or hold a NaN
/// or +inf. One pass over each head's scores (hkv_softmax_exp_chunked), one over the group's
/// numerators (hkv_group_mean_buckets), the histogram, and one that packs the kept set and
/// weights (hkv_keep_compress).
size_t hkv_tau_select_group(const float *scores, size_t heads, size_t n, float tau, size_t cap,
                            int32_t *indices, float *weights, float *kept_mass,
                            float *log_normalizers);

/// Sum of a float array; used as the memory read bandwidth reference scan.
double hkv_scan_sum_f32(const float *x, size_t n);

/// Copies n fp16 rows of d dims, reached by pointer, into dst (row-major, contiguous).
void hkv_gather_rows_f16(const uint16_t *_Nullable const *_Nonnull rows, size_t n, size_t d, uint16_t *dst);

/// CRC-32C (Castagnoli) of n bytes, continuing from `crc` (0 to start). Uses the SSE4.2
/// instruction where the CPU has it.
uint32_t hkv_crc32c(uint32_t crc, const void *data, size_t n);

/// y[t * y_stride + r] = sum_i x[t * in + i] * w[r * in + i] for t < tokens, r < rows: a
/// block of rows of a linear layer applied to every token (the model's forward pass).
void hkv_matmul_rows_f32(const float *x, size_t tokens, size_t in, const float *w, size_t rows,
                         float *y, size_t y_stride);

/// Block formats of GGUF weights the quantized product reads (ggml's type numbers).
enum { HKV_WEIGHTS_F32 = 0, HKV_WEIGHTS_F16 = 1, HKV_WEIGHTS_Q4_1 = 3, HKV_WEIGHTS_Q8_0 = 8 };

/// Bytes of one weight row of `in` elements in `type` (0 for an unknown type or a row that
/// does not split into 32-element blocks).
size_t hkv_weight_row_bytes(int type, size_t in);

/// hkv_matmul_rows_f32 on weights kept in their GGUF block format (`rows` rows of
/// hkv_weight_row_bytes(type, in) bytes each): few tokens read each block once and
/// dequantize in registers (decode is bound by the bytes read, so 4-bit weights are ~6x
/// fewer than f32); many tokens dequantize a tile of 64 rows once and run the f32 tiles.
void hkv_matmul_rows_quantized(const float *x, size_t tokens, size_t in, const void *w,
                               int type, size_t rows, float *y, size_t y_stride);

/// Dequantizes row `row` of block-format weights into out[in].
void hkv_dequantize_row(const void *w, int type, size_t in, size_t row, float *out);

/// Causal mask and softmax: row r of `scores` [rows][n] is normalised over its first
/// visible[r] entries and zero after them.
void hkv_causal_softmax_rows(float *scores, size_t rows, size_t n, const size_t *visible);

#pragma clang assume_nonnull end

#ifdef __cplusplus
}
#endif

#endif
