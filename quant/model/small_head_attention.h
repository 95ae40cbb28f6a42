// Causal softmax attention for small head dimensions, on the CPU.
//
// With heads of 8 (stories260k, and the small models tests and demos use)
// the usual form, a batched product q k^T, softmax and a product with V, runs
// matrix products whose inner dimension is the head's: 8 multiply-adds per
// score through a BLAS call, the scores streamed through memory between the
// three steps. Evaluation then spent ~80% of its time there (eval_bench).
// This kernel walks each query's keys once instead: its scores eight keys at
// a time (keys and values laid out transposed, so a vector holds eight keys'
// same coordinate), their maximum, e^(s - max) and the weighted sum of the
// values, all in registers and one row of scratch; masked keys are never
// computed. Each score costs the kernel 2 x hd multiply-adds at AVX2's
// width, where the matrix products run at the BLAS's: bench/attention_bench
// (64 heads x 512 tokens, 2 cores) has the kernel 2.5-2.7x as fast at hd 4,
// 1.7-2.1x at 8, 1.3-1.5x at 16, 1.0-1.3x at 24 and 0.8x at 32, so
// CausalAttention (llama.h) gives it heads of at most 16.
#ifndef QAAS_QUANT_MODEL_SMALL_HEAD_ATTENTION_H_
#define QAAS_QUANT_MODEL_SMALL_HEAD_ATTENTION_H_

#include <ATen/ATen.h>

#include <cstdint>

namespace qaas::quant {

// The largest head dimension the kernel takes.
constexpr int kSmallHeadMaxDim = 16;

// Whether this CPU runs the kernel: x86-64 with AVX2 and FMA.
bool SmallHeadAttentionAvailable();

// Causal attention of q, k, v [BH, T, hd] (as CausalAttention in llama.h) by
// the kernel, split by rows (one query of one head) over ATen's threads.
// Undefined where the kernel does not apply: not float32, not on the CPU,
// hd > kSmallHeadMaxDim, or a CPU without AVX2 and FMA.
at::Tensor SmallHeadCausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int window,
                                    double scale);

// The kernel on rows [row_begin, row_end) of `out` (row bh * t + i: query i
// of head bh), each the softmax-weighted sum of the values over keys j with
// max(0, i - window + 1) <= j <= i (window 0: every j <= i), weights from
// scale * q_i . k_j.
//   q, out: [BH, t, hd], contiguous.
//   kt, vt: [BH, hd, tpad], the keys and values transposed, tpad a multiple
//           of 8, >= t (what lies past t is never read as a key).
//   scratch: tpad floats, this caller's own.
// Only where SmallHeadAttentionAvailable().
void SmallHeadAttentionRows(const float* q, const float* kt, const float* vt, float* out, int64_t row_begin,
                            int64_t row_end, int64_t t, int64_t tpad, int hd, int window, float scale,
                            float* scratch);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_SMALL_HEAD_ATTENTION_H_
