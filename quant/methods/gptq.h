// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers"): quantize W one column at a time and
// spread each column's rounding error over the not-yet-quantized columns with
// the inverse Hessian of the layer's reconstruction loss ||WX - QX||^2,
// H = 2 X X^T / n. Algorithm 1 of the paper, with its "lazy batch" updates
// (blocks of `blocksize` columns), Cholesky form of H^-1, act-order
// (columns by decreasing diag(H)) and group-wise parameters.
#ifndef QAAS_QUANT_METHODS_GPTQ_H_
#define QAAS_QUANT_METHODS_GPTQ_H_

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "quant/methods/quantized_linear.h"
#include "quant/scheme.h"

namespace qaas::quant {

struct GptqOptions {
  double percdamp = 0.01;  // damping = percdamp * mean(diag(H))
  int blocksize = 128;     // lazy-batch block of columns
  bool act_order = false;  // desc_act: quantize columns by decreasing diag(H)
  bool static_groups = false;  // group parameters from the unmodified W, before any update
  int max_damp_retries = 8;    // each retry multiplies the damping by 10
  // AdaDim's per-IC groups: each column's parameters come from its own
  // (updated) values, in groups of group_size rows, when its turn comes.
  bool per_input_channel = false;
};

// What happened inside one call, for the report.
struct GptqStats {
  double damp = 0;           // the damping finally used
  int cholesky_retries = 0;  // times H + damp*I was not positive definite
  int dead_columns = 0;      // inputs that were always zero (diag(H) == 0)
};

// Streams calibration inputs into H = 2 X X^T / n in float32.
class HessianAccumulator {
 public:
  HessianAccumulator(int64_t columns, const at::Device& device);
  // x: [tokens, columns]; any float dtype.
  void Add(const at::Tensor& x);
  const at::Tensor& H() const { return H_; }
  int64_t samples() const { return n_; }

 private:
  at::Tensor H_;
  int64_t n_ = 0;
};

// W: float [rows, columns] (out x in); H from HessianAccumulator. Integer
// weights, per channel, per group or per tensor, or MX weights (blocks of 32
// input columns; no act_order). Does not modify W or H.
// InvalidArgument on shape mismatch; Internal when H stays indefinite after
// every damping retry.
absl::StatusOr<QuantizedLinear> QuantizeGptq(const at::Tensor& W, const at::Tensor& H,
                                             const TensorQuant& spec, const GptqOptions& options,
                                             GptqStats* stats = nullptr);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_GPTQ_H_
