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
#include "quant/method_table.h"
#include "quant/methods/quantized_linear.h"
#include "quant/scheme.h"

namespace qaas::quant {

// Which weights a group's grid (scale, zero) is read from when the group's
// first column comes up inside a lazy block (GptqOptions::blocksize), for
// every grid set during the sweep: per-group integer grids, MX blocks and
// AdaDim's per-IC columns. Per-channel / per-tensor grids and static groups
// come from the unmodified W and do not depend on it.
enum class GroupParamsFrom {
  // The group's columns as updated so far, by every column quantized before
  // it, including the earlier columns of the same lazy block (and, for a
  // group that runs past the block, their still pending lazy update). This is
  // Algorithm 1 without lazy batching, so the result does not depend on
  // `blocksize` (the paper sets a group's grid during the sweep, from the
  // current weights). The default (docs/decisions.md, 23).
  kUpdated,
  // The group's columns as they stood when the lazy block began (updated by
  // earlier blocks only), as the GPTQ authors' code and AutoGPTQ compute them
  // (find_params on W while the block is updated in a copy). For comparing
  // against those implementations; the result depends on `blocksize`.
  kBlockStart,
};

struct GptqOptions {
  double percdamp = 0.01;      // damping = percdamp * mean(diag(H))
  int blocksize = 128;         // lazy-batch block of columns
  bool act_order = false;      // desc_act: quantize columns by decreasing diag(H)
  bool static_groups = false;  // group parameters from the unmodified W, before any update
  int max_damp_retries = 8;    // each retry multiplies the damping by 10
  // AdaDim's per-IC groups: each column's parameters come from its own
  // (updated) values, in groups of group_size rows, when its turn comes.
  bool per_input_channel = false;
  GroupParamsFrom group_params_from = GroupParamsFrom::kUpdated;
};

// The options of a recipe step (method_table.h: "gptq", or "adadim" over
// gptq); a step of another method leaves the defaults above. The table's
// defaults equal these (a test checks).
inline GptqOptions GptqOptionsOf(const RecipeStep& step) {
  GptqOptions o;
  o.percdamp = step.Get("damp", o.percdamp);
  o.blocksize = step.Get("block_size", o.blocksize);
  o.act_order = step.Get("act_order", o.act_order);
  o.static_groups = step.Get("static_groups", o.static_groups);
  return o;
}

// What happened inside one call, for the report.
struct GptqStats {
  double damp = 0;           // the damping finally used
  int cholesky_retries = 0;  // times H + damp*I was not positive definite
  int dead_columns = 0;      // inputs that were always zero (diag(H) == 0)
};

// Streams calibration inputs into H = 2 X X^T / n in float32. Windows are
// staged into batches of about `batch_bytes` and each batch is one symmetric
// rank-k update of the upper triangle (half the work of X^T X), so small
// windows cost no more per token than large ones.
class HessianAccumulator {
 public:
  static constexpr int64_t kDefaultBatchBytes = int64_t{64} << 20;
  // allow_blas = false keeps CPU updates on the ATen panels (the path every
  // other device takes), for tests and comparisons.
  HessianAccumulator(int64_t columns, const at::Device& device,
                     int64_t batch_bytes = kDefaultBatchBytes, bool allow_blas = true);
  // x: [..., columns]; any float dtype.
  void Add(const at::Tensor& x);
  // The symmetric H of every token added so far (staged ones included).
  const at::Tensor& H() const;
  int64_t samples() const;
  // Whether CPU updates are BLAS's ssyrk (found in the loaded BLAS) rather
  // than ATen products in panels.
  static bool UsesBlasSyrk();

 private:
  void Flush() const;
  void Update(const at::Tensor& x) const;

  // H() folds the staged tokens in: logically const.
  // [columns, columns]: its upper triangle is H; the whole of it once H()
  // has mirrored it (symmetric_), until the next update.
  mutable at::Tensor H_;
  mutable bool symmetric_ = true;
  mutable at::Tensor staged_;  // [batch_rows_, columns]
  mutable int64_t pending_ = 0;
  mutable int64_t n_ = 0;
  const int64_t batch_rows_;
  const bool allow_blas_;
};

// The upper triangular U with U^T U = A^-1, the upper Cholesky factor of the
// inverse, for A float [n, n] symmetric positive definite: GPTQ's H^-1 factor.
// With J the reversal of rows and columns, J A J = L L^T gives A^-1 =
// (J L^-1 J)^T (J L^-1 J), and J L^-1 J is upper triangular with a positive
// diagonal, so it is that factor: one Cholesky factorisation and one
// triangular inverse, n^3 / 3 flops each, where factoring A, inverting it
// and factoring the inverse takes four times n^3 / 3. The triangular inverse
// is LAPACK's strtri from the loaded BLAS on the CPU (allow_lapack; as for
// ssyrk above), else a triangular solve against the identity.
// FailedPrecondition when A is not positive definite; InvalidArgument when it
// is not a square float or double matrix (what the Cholesky takes).
absl::StatusOr<at::Tensor> UpperCholeskyOfInverse(const at::Tensor& A, bool allow_lapack = true);

// Whether UpperCholeskyOfInverse finds LAPACK's strtri in this process.
bool HasLapackTrtri();

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
