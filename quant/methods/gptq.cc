#include "quant/methods/gptq.h"

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quant/formats/number_format.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

HessianAccumulator::HessianAccumulator(int64_t columns, const at::Device& device, int64_t batch_bytes,
                                       bool allow_blas)
    : H_(at::zeros({columns, columns}, at::TensorOptions().dtype(at::kFloat).device(device))),
      batch_rows_(std::max<int64_t>(256, batch_bytes / (4 * std::max<int64_t>(columns, 1)))),
      allow_blas_(allow_blas) {}

void HessianAccumulator::Add(const at::Tensor& x_in) {
  at::Tensor x = x_in.reshape({-1, x_in.size(-1)});
  const int64_t tokens = x.size(0);
  if (tokens == 0) return;
  const int64_t columns = H_.size(0);
  // Small windows are staged so that each update is one large product; a
  // window at least a batch long goes straight in.
  if (pending_ == 0 && tokens >= batch_rows_) {
    Update(x.to(at::kFloat));
    return;
  }
  if (!staged_.defined()) staged_ = at::empty({batch_rows_, columns}, H_.options());
  for (int64_t done = 0; done < tokens;) {
    const int64_t take = std::min(tokens - done, batch_rows_ - pending_);
    staged_.narrow(0, pending_, take).copy_(x.narrow(0, done, take));
    pending_ += take;
    done += take;
    if (pending_ == batch_rows_) Flush();
  }
}

void HessianAccumulator::Flush() const {
  if (pending_ == 0) return;
  const int64_t t = pending_;
  pending_ = 0;
  Update(staged_.narrow(0, 0, t));
}

namespace {

// BLAS's symmetric rank-k update (Fortran interface; the two trailing
// arguments are the hidden lengths of the character arguments), taken from
// the BLAS that libtorch loaded: Debian's libtorch links libblas.so.3, which
// scripts/setup points at OpenBLAS. Null where the process has none (a
// libtorch with MKL linked in statically): the ATen panels are used then.
using SsyrkFn = void (*)(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
                         const float* a, const int* lda, const float* beta, float* c, const int* ldc, size_t,
                         size_t);

SsyrkFn BlasSsyrk() {
  static const SsyrkFn fn = reinterpret_cast<SsyrkFn>(dlsym(RTLD_DEFAULT, "ssyrk_"));
  return fn;
}

// LAPACK's triangular inverse, in place (Fortran interface, as ssyrk), from
// the LAPACK libtorch loaded (liblapack.so.3: OpenBLAS's once scripts/setup
// has installed libopenblas0-pthread).
using StrtriFn = void (*)(const char* uplo, const char* diag, const int* n, float* a, const int* lda, int* info,
                          size_t, size_t);

StrtriFn LapackStrtri() {
  static const StrtriFn fn = reinterpret_cast<StrtriFn>(dlsym(RTLD_DEFAULT, "strtri_"));
  return fn;
}

bool FitsBlasInt(int64_t v) { return v >= 0 && v <= std::numeric_limits<int>::max(); }

}  // namespace

bool HessianAccumulator::UsesBlasSyrk() { return BlasSsyrk() != nullptr; }

bool HasLapackTrtri() { return LapackStrtri() != nullptr; }

absl::StatusOr<at::Tensor> UpperCholeskyOfInverse(const at::Tensor& A, bool allow_lapack) {
  if (A.dim() != 2 || A.size(0) != A.size(1) || (A.scalar_type() != at::kFloat && A.scalar_type() != at::kDouble)) {
    return absl::InvalidArgumentError(absl::StrCat("want a square float or double matrix, got ", A.toString(), " ",
                                                   c10::str(A.sizes())));
  }
  const int64_t n = A.size(0);
  auto [L, info] = at::linalg_cholesky_ex(A.flip({0, 1}));
  if (const int64_t i = info.item<int64_t>(); i != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the matrix is not positive definite (Cholesky stopped at its leading minor of order ", i, ")"));
  }
  if (const StrtriFn trtri = allow_lapack ? LapackStrtri() : nullptr;
      trtri != nullptr && L.is_cpu() && L.scalar_type() == at::kFloat && FitsBlasInt(n)) {
    // Row-major lower L is column-major upper L^T; inverting that in place
    // leaves L^-T column-major, which is L^-1 row-major.
    L = L.contiguous();
    const int nn = static_cast<int>(n), lda = std::max(1, nn);
    int trtri_info = 0;
    trtri("U", "N", &nn, L.data_ptr<float>(), &lda, &trtri_info, 1, 1);
    if (trtri_info != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("the Cholesky factor is singular (strtri info ", trtri_info, ")"));
    }
  } else {
    L = at::linalg_solve_triangular(L, at::eye(n, L.options()), /*upper=*/false);
  }
  return L.flip({0, 1});
}

void HessianAccumulator::Update(const at::Tensor& x) const {
  const int64_t t = x.size(0), columns = H_.size(0);
  // Running mean: H_n = n/(n+t) H_{n-1} + 2/(n+t) X^T X, rescaled once per
  // batch rather than once per window.
  const double keep = n_ > 0 ? static_cast<double>(n_) / static_cast<double>(n_ + t) : 1.0;
  n_ += t;
  const double alpha = 2.0 / static_cast<double>(n_);
  symmetric_ = false;
  if (columns == 0) return;
  // On the CPU, BLAS's syrk: the triangle only, at the GEMM kernel's rate
  // (ATen has no syrk). Row-major H's upper triangle is column-major's
  // lower one, and row-major x [t, columns] is column-major x^T, so this is
  // H^T(lower) = keep * H^T + alpha * x^T x: uplo 'L', trans 'N'.
  if (const SsyrkFn syrk = allow_blas_ ? BlasSsyrk() : nullptr; syrk != nullptr && H_.is_cpu() && x.is_cpu() &&
                                         x.scalar_type() == at::kFloat && FitsBlasInt(columns) && FitsBlasInt(t)) {
    // Rows of x must be columns apart or more (a row's stride means nothing
    // when there is one row).
    const bool rows_ok = x.stride(1) == 1 && (t == 1 || x.stride(0) >= columns) && FitsBlasInt(x.stride(0));
    const at::Tensor a_mat = rows_ok ? x : x.contiguous();
    const int n = static_cast<int>(columns), k = static_cast<int>(t), ldc = n;
    const int lda = t == 1 ? n : static_cast<int>(a_mat.stride(0));
    const float a = static_cast<float>(alpha), b = static_cast<float>(keep);
    syrk("L", "N", &n, &k, &a, a_mat.data_ptr<float>(), &lda, &b, H_.data_ptr<float>(), &ldc, 1, 1);
    return;
  }
  if (keep != 1.0) H_.mul_(keep);
  // Elsewhere the symmetric update on the upper triangle in panels: one
  // product per panel of kPanel rows, H[i:i+p, i:] += X_i^T X[:, i:], which
  // is (1 + kPanel / columns) / 2 of the full X^T X.
  constexpr int64_t kPanel = 512;
  for (int64_t i = 0; i < columns; i += kPanel) {
    const int64_t p = std::min(kPanel, columns - i);
    H_.narrow(0, i, p)
        .narrow(1, i, columns - i)
        .addmm_(x.narrow(1, i, p).t(), x.narrow(1, i, columns - i), /*beta=*/1, alpha);
  }
}

const at::Tensor& HessianAccumulator::H() const {
  Flush();
  staged_ = at::Tensor();  // most callers read H once, after the last window
  if (!symmetric_) {
    // Mirror the upper triangle (the diagonal panels also wrote below the
    // diagonal: that part is replaced). The next update rewrites the upper
    // triangle and rescales all of it, and the next H() mirrors it again.
    at::Tensor strict_upper_t = at::triu(H_, 1).t();
    H_.triu_().add_(strict_upper_t);
    symmetric_ = true;
  }
  return H_;
}

int64_t HessianAccumulator::samples() const { return n_ + pending_; }

namespace {

// Quantize-dequantize a column vector w [rows] with per-row scale/zero [rows].
at::Tensor Quant(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero, double maxq,
                 at::Tensor* code) {
  *code = at::clamp(at::round(w / scale) + zero, 0.0, maxq);
  return (*code - zero) * scale;
}

// Min-max parameters of a slice of columns, per row: scale/zero [rows].
void FindParams(const at::Tensor& block, int bits, bool symmetric, at::Tensor* scale,
                at::Tensor* zero) {
  RangeToScaleZero(std::get<0>(block.min(1)), std::get<0>(block.max(1)), bits, symmetric, scale,
                   zero);
}

// ---------------------------------------------------------------------------
// The sweep's state, as seen from the column at position `col` (in
// quantization order) of the lazy block [i1, i2).
struct Sweep {
  const at::Tensor& W;     // [rows, columns]: updated by earlier blocks only
  const at::Tensor& W1;    // [rows, i2 - i1]: this block, updated by its columns before col
  const at::Tensor& Err1;  // [rows, i2 - i1]: their scaled errors (zero from col on)
  const at::Tensor& Hinv;  // upper Cholesky factor of H^-1
  int64_t i1, i2, col;
  GroupParamsFrom from;

  // Columns [col, col + width) as the group's grid reads them.
  at::Tensor Columns(int64_t width) const {
    // At a block's first column nothing of the block has been applied yet.
    if (from == GroupParamsFrom::kBlockStart || col == i1) return W.narrow(1, col, width);
    const int64_t in_block = std::min(width, i2 - col);
    at::Tensor inside = W1.narrow(1, col - i1, in_block);
    if (in_block == width) return inside;
    // Past the block: W still lacks this block's lazy update so far.
    const int64_t rest = width - in_block;
    at::Tensor beyond =
        W.narrow(1, i2, rest) - at::matmul(Err1, Hinv.narrow(0, i1, i2 - i1).narrow(1, i2, rest));
    return at::cat({inside, beyond}, 1);
  }
};

// ---------------------------------------------------------------------------
// Where each column's grid comes from, and how the result is laid out: one
// strategy per kind of parameters.
class Grids {
 public:
  virtual ~Grids() = default;
  // Once, with the dead-zeroed W in the original column order; perm: the
  // quantization order (empty without act-order).
  virtual void Prepare(const at::Tensor& W, const std::vector<int64_t>& perm) {}
  // Whether Select at position col reads columns after col (which must then
  // carry every update so far: the sweep applies its pending panel first).
  virtual bool ReadsAhead(int64_t col) const { return false; }
  // Makes the grid of the column at sweep.col current.
  virtual void Select(const Sweep& sweep) = 0;
  // Quantize-dequantize column w on the current grid; *code: its integer codes.
  virtual at::Tensor Quantize(const at::Tensor& w, at::Tensor* code) const {
    return Quant(w, scale_, zero_, maxq_, code);
  }
  // The result from Q and codes in quantization order; invperm undefined
  // without act-order.
  virtual QuantizedLinear Finish(at::Tensor Q, at::Tensor codes, const at::Tensor& invperm) = 0;

 protected:
  Grids(const TensorQuant& spec, int64_t rows, int64_t columns)
      : bits_(spec.bits),
        symmetric_(spec.symmetric),
        maxq_(static_cast<double>((1 << spec.bits) - 1)),
        rows_(rows),
        columns_(columns) {}

  // Output-channel layout of integer results: scales/zeros [rows, groups] in
  // group order; groups_by_position: a column's group is that of its position
  // in quantization order (else of its original index).
  QuantizedLinear RowLayout(at::Tensor Q, at::Tensor codes, at::Tensor scales, at::Tensor zeros,
                            int64_t groupsize, const at::Tensor& invperm,
                            bool groups_by_position) const {
    QuantizedLinear out;
    out.params.bits = bits_;
    out.params.symmetric = symmetric_;
    out.params.group_size = groupsize == -1 ? 0 : static_cast<int>(groupsize);
    at::Tensor group_of_position =
        at::div(at::arange(columns_, at::TensorOptions().dtype(at::kLong).device(Q.device())),
                groupsize == -1 ? columns_ : groupsize, "floor");
    at::Tensor g_idx = group_of_position;
    if (invperm.defined()) {
      Q = Q.index_select(1, invperm);
      codes = codes.index_select(1, invperm);
      // Column j sat at position invperm[j].
      if (groups_by_position) g_idx = group_of_position.index_select(0, invperm);
    }
    out.params.scale = std::move(scales);
    out.params.zero = std::move(zeros);
    out.codes = codes.to(at::kInt);
    out.g_idx = g_idx.to(at::kInt);
    out.dequantized = std::move(Q);
    return out;
  }

  const int bits_;
  const bool symmetric_;
  const double maxq_;
  const int64_t rows_, columns_;
  at::Tensor scale_, zero_;  // the current grid, [rows]
};

// Per output channel (or per tensor): one grid per row from the whole W.
class RowGrids : public Grids {
 public:
  RowGrids(const TensorQuant& spec, int64_t rows, int64_t columns)
      : Grids(spec, rows, columns), spec_(spec) {}
  void Prepare(const at::Tensor& W, const std::vector<int64_t>&) override {
    IntQuantParams p = ComputeIntParams(W, spec_);
    scale_ = p.scale.select(1, 0).contiguous();
    zero_ = p.zero.select(1, 0).contiguous();
  }
  void Select(const Sweep&) override {}
  QuantizedLinear Finish(at::Tensor Q, at::Tensor codes, const at::Tensor& invperm) override {
    at::Tensor scales = at::zeros({rows_, 1}, Q.options()),
               zeros = at::zeros({rows_, 1}, Q.options());
    scales.select(1, 0).copy_(scale_);
    zeros.select(1, 0).copy_(zero_);
    return RowLayout(std::move(Q), std::move(codes), scales, zeros, -1, invperm, true);
  }

 private:
  const TensorQuant spec_;
};

// Groups of `groupsize` consecutive positions in quantization order, each
// with its grid from its columns when its first column comes up (the paper's
// grouping; with act-order, groups of reordered columns, as GPTQ's desc_act).
class SweepGroups : public Grids {
 public:
  SweepGroups(const TensorQuant& spec, int64_t rows, int64_t columns, int64_t groupsize,
              const at::TensorOptions& options)
      : Grids(spec, rows, columns), groupsize_(groupsize) {
    const int64_t groups = (columns + groupsize - 1) / groupsize;
    scales_ = at::zeros({rows, groups}, options);
    zeros_ = at::zeros({rows, groups}, options);
  }
  bool ReadsAhead(int64_t col) const override { return col % groupsize_ == 0; }  // a group begins
  void Select(const Sweep& s) override {
    if (!ReadsAhead(s.col)) return;
    FindParams(s.Columns(std::min(groupsize_, columns_ - s.col)), bits_, symmetric_, &scale_,
               &zero_);
    scales_.select(1, s.col / groupsize_).copy_(scale_);
    zeros_.select(1, s.col / groupsize_).copy_(zero_);
  }
  QuantizedLinear Finish(at::Tensor Q, at::Tensor codes, const at::Tensor& invperm) override {
    return RowLayout(std::move(Q), std::move(codes), scales_, zeros_, groupsize_, invperm, true);
  }

 private:
  const int64_t groupsize_;
  at::Tensor scales_, zeros_;  // [rows, groups]
};

// Static groups: every group's grid from the unmodified W, groups of
// consecutive columns in the original order (whatever the quantization order).
class StaticGroups : public Grids {
 public:
  StaticGroups(const TensorQuant& spec, int64_t rows, int64_t columns, int64_t groupsize)
      : Grids(spec, rows, columns), groupsize_(groupsize) {}
  void Prepare(const at::Tensor& W, const std::vector<int64_t>& perm) override {
    perm_ = perm;
    for (int64_t g = 0; g < columns_; g += groupsize_) {
      at::Tensor s, z;
      FindParams(W.narrow(1, g, std::min(groupsize_, columns_ - g)), bits_, symmetric_, &s, &z);
      params_.emplace_back(s, z);
    }
  }
  void Select(const Sweep& s) override {
    const int64_t orig = perm_.empty() ? s.col : perm_[s.col];
    std::tie(scale_, zero_) = params_[orig / groupsize_];
  }
  QuantizedLinear Finish(at::Tensor Q, at::Tensor codes, const at::Tensor& invperm) override {
    const int64_t groups = static_cast<int64_t>(params_.size());
    at::Tensor scales = at::zeros({rows_, groups}, Q.options()),
               zeros = at::zeros({rows_, groups}, Q.options());
    for (int64_t g = 0; g < groups; ++g) {
      scales.select(1, g).copy_(params_[g].first);
      zeros.select(1, g).copy_(params_[g].second);
    }
    return RowLayout(std::move(Q), std::move(codes), scales, zeros, groupsize_, invperm, false);
  }

 private:
  const int64_t groupsize_;
  std::vector<int64_t> perm_;
  std::vector<std::pair<at::Tensor, at::Tensor>> params_;  // by group, original order
};

// MX weights: each block of 32 input columns shares one power-of-two scale
// per row, found (like the sweep's groups) when the block's first column
// comes up. No act-order, so positions are columns.
class MxBlocks : public Grids {
 public:
  MxBlocks(const TensorQuant& spec, int64_t rows, int64_t columns, ElementFormat element)
      : Grids(spec, rows, columns), element_(element) {}
  bool ReadsAhead(int64_t col) const override { return col % kMxBlockSize == 0; }  // a block begins
  void Select(const Sweep& s) override {
    if (!ReadsAhead(s.col)) return;
    scale_ = Pow2(MxSharedExponents(s.Columns(std::min<int64_t>(kMxBlockSize, columns_ - s.col)),
                                    element_))
                 .select(1, 0);
  }
  at::Tensor Quantize(const at::Tensor& w, at::Tensor* code) const override {
    *code = at::zeros_like(w);
    return RoundToElement(w / scale_, element_) * scale_;
  }
  QuantizedLinear Finish(at::Tensor Q, at::Tensor, const at::Tensor&) override {
    QuantizedLinear out;
    out.mx = true;
    out.element = element_;
    out.dequantized = std::move(Q);
    return out;
  }

 private:
  const ElementFormat element_;
};

// AdaDim's per-input-channel groups: each column's own grid, per group of
// `ic_group` rows, from its values when its turn comes. The result describes
// W^T (rows of the transpose are input channels; groups run along outputs).
class InputChannelGrids : public Grids {
 public:
  InputChannelGrids(const TensorQuant& spec, int64_t rows, int64_t columns, int64_t groupsize,
                    const at::TensorOptions& options)
      : Grids(spec, rows, columns),
        ic_group_(groupsize == -1 ? rows : std::min(groupsize, rows)),
        ic_groups_((rows + ic_group_ - 1) / ic_group_) {
    ic_scales_ = at::zeros({ic_groups_, columns}, options);
    ic_zeros_ = at::zeros({ic_groups_, columns}, options);
  }
  void Select(const Sweep& s) override {
    at::Tensor padded = s.Columns(1).select(1, 0);
    if (ic_groups_ * ic_group_ != rows_) {
      padded = at::cat(
          {padded, padded.narrow(0, rows_ - 1, 1).expand({ic_groups_ * ic_group_ - rows_})});
    }
    at::Tensor grouped = padded.view({ic_groups_, ic_group_});
    at::Tensor sc, z;
    RangeToScaleZero(std::get<0>(grouped.min(1)), std::get<0>(grouped.max(1)), bits_, symmetric_,
                     &sc, &z);
    ic_scales_.select(1, s.col).copy_(sc);
    ic_zeros_.select(1, s.col).copy_(z);
    scale_ = sc.repeat_interleave(ic_group_).narrow(0, 0, rows_);
    zero_ = z.repeat_interleave(ic_group_).narrow(0, 0, rows_);
  }
  QuantizedLinear Finish(at::Tensor Q, at::Tensor codes, const at::Tensor& invperm) override {
    if (invperm.defined()) {
      Q = Q.index_select(1, invperm);
      codes = codes.index_select(1, invperm);
      ic_scales_ = ic_scales_.index_select(1, invperm);
      ic_zeros_ = ic_zeros_.index_select(1, invperm);
    }
    QuantizedLinear out;
    out.per_input_channel = true;
    out.params.bits = bits_;
    out.params.symmetric = symmetric_;
    out.params.group_size = ic_group_ == rows_ ? 0 : static_cast<int>(ic_group_);
    out.params.scale = ic_scales_.t().contiguous();
    out.params.zero = ic_zeros_.t().contiguous();
    out.codes = codes.t().contiguous().to(at::kInt);
    out.g_idx = at::div(at::arange(rows_, at::TensorOptions().dtype(at::kLong).device(Q.device())),
                        ic_group_, "floor")
                    .to(at::kInt);
    out.dequantized = std::move(Q);
    return out;
  }

 private:
  const int64_t ic_group_, ic_groups_;
  at::Tensor ic_scales_, ic_zeros_;  // [ic_groups, columns], by position
};

// The strategy for `spec` and the options; errors for unsupported combinations.
absl::StatusOr<std::unique_ptr<Grids>> MakeGrids(const TensorQuant& spec, const GptqOptions& o,
                                                 int64_t rows, int64_t columns,
                                                 const at::TensorOptions& options) {
  if (spec.is_mx()) {
    if (o.act_order || o.static_groups || o.per_input_channel) {
      return absl::InvalidArgumentError(
          "GPTQ: MX weights take neither act_order, static_groups nor per-input-channel groups "
          "(their blocks are fixed runs of 32 input columns)");
    }
    QAAS_ASSIGN_OR_RETURN(const ElementFormat element, ElementFormatOf(spec));
    return std::unique_ptr<Grids>(new MxBlocks(spec, rows, columns, element));
  }
  if (spec.format != NumberFormat::kInt) {
    return absl::UnimplementedError(
        absl::StrCat("GPTQ: weight format ", NumberFormatName(spec.format), " is not supported"));
  }
  const int64_t groupsize = spec.granularity == Granularity::kPerGroup ? spec.group_size : -1;
  if (o.per_input_channel)
    return std::unique_ptr<Grids>(new InputChannelGrids(spec, rows, columns, groupsize, options));
  if (groupsize == -1) return std::unique_ptr<Grids>(new RowGrids(spec, rows, columns));
  if (o.static_groups)
    return std::unique_ptr<Grids>(new StaticGroups(spec, rows, columns, groupsize));
  return std::unique_ptr<Grids>(new SweepGroups(spec, rows, columns, groupsize, options));
}

// The upper Cholesky factor of (H + damp I)^-1, damping more (x10) after
// each failed attempt; records the damping used in st.
absl::StatusOr<at::Tensor> DampedInverseCholesky(const at::Tensor& H, const GptqOptions& o,
                                                 GptqStats& st) {
  double damp = o.percdamp * H.diagonal().mean().item<double>();
  for (int attempt = 0;; ++attempt) {
    at::Tensor Hd = H.clone();
    Hd.diagonal().add_(damp);
    if (auto U = UpperCholeskyOfInverse(Hd); U.ok() && !U->isnan().any().item<bool>()) {
      st.damp = damp;
      return *std::move(U);
    }
    if (attempt >= o.max_damp_retries) {
      return absl::InternalError(
          absl::StrCat("GPTQ: Hessian is not positive definite even with damping ", damp, " (",
                       attempt + 1, " attempts)"));
    }
    ++st.cholesky_retries;
    damp = (damp > 0 ? damp : 1e-8) * 10;
  }
}

}  // namespace

absl::StatusOr<QuantizedLinear> QuantizeGptq(const at::Tensor& W_in, const at::Tensor& H_in,
                                             const TensorQuant& spec, const GptqOptions& o,
                                             GptqStats* stats) {
  const int64_t columns = W_in.size(1);
  if (H_in.dim() != 2 || H_in.size(0) != columns || H_in.size(1) != columns) {
    return absl::InvalidArgumentError(absl::StrCat("GPTQ: Hessian is [", H_in.size(0), ", ",
                                                   H_in.size(1), "] but the weight has ", columns,
                                                   " columns"));
  }
  if (o.blocksize < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPTQ: blocksize is ", o.blocksize, ", must be >= 1"));
  }
  QAAS_ASSIGN_OR_RETURN(std::unique_ptr<Grids> grids, MakeGrids(spec, o, W_in.size(0), columns,
                                                                W_in.options().dtype(at::kFloat)));
  GptqStats local;
  GptqStats& st = stats ? *stats : local;

  at::Tensor W = W_in.to(at::kFloat).clone();
  at::Tensor H = H_in.clone();
  // Dead inputs carry no information: fix their diagonal and zero their weights.
  at::Tensor dead = H.diagonal() == 0;
  st.dead_columns = static_cast<int>(dead.sum().item<int64_t>());
  H.diagonal().masked_fill_(dead, 1.0);
  W.index_put_({at::indexing::Slice(), dead}, 0.0);

  // Act-order: quantize columns by decreasing diag(H). Grids that come from
  // the unmodified W see it in the original order.
  at::Tensor perm, invperm;
  std::vector<int64_t> perm_cpu;
  if (o.act_order) {
    perm = at::argsort(H.diagonal(), /*dim=*/0, /*descending=*/true);
    at::Tensor p = perm.to(at::kCPU).contiguous();
    perm_cpu.assign(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
  }
  grids->Prepare(W, perm_cpu);
  if (o.act_order) {
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
    invperm = at::argsort(perm);
  }

  // Hinv: the upper Cholesky factor of (H + damp I)^-1.
  QAAS_ASSIGN_OR_RETURN(const at::Tensor Hinv, DampedInverseCholesky(H, o, st));

  // Algorithm 1: lazy blocks of columns; in each, quantize a column, spread
  // its error over the rest of the block, then the block's errors over every
  // later column at once. The sweep runs on transposed copies so that a
  // column is a contiguous row, and inside a block the rank-1 updates stay
  // within a panel of kPanel columns; the panel's errors reach the rest of
  // the block as one product when it closes. A panel also closes before a
  // grid that reads columns ahead of the current one (ReadsAhead), so such
  // grids see every update so far, as without panels.
  constexpr int64_t kPanel = 16;
  const int64_t rows = W.size(0);
  at::Tensor Wt = W.t().contiguous();  // [columns, rows]
  W = at::Tensor();
  const at::Tensor W_view = Wt.t();
  at::Tensor Qt = at::empty_like(Wt), Ct = at::empty_like(Wt);
  at::Tensor Wt1 = at::empty({std::min<int64_t>(o.blocksize, columns), rows}, Wt.options());
  at::Tensor Errt1 = at::empty_like(Wt1);
  for (int64_t i1 = 0; i1 < columns; i1 += o.blocksize) {
    const int64_t i2 = std::min<int64_t>(i1 + o.blocksize, columns), count = i2 - i1;
    at::Tensor B = Wt1.narrow(0, 0, count), E = Errt1.narrow(0, 0, count);
    B.copy_(Wt.narrow(0, i1, count));
    E.zero_();
    const at::Tensor W1_view = B.t(), Err1_view = E.t();
    const at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);
    const at::Tensor diag = Hinv1.diagonal().to(at::kCPU, at::kDouble).contiguous();  // one sync per block
    const double* d = diag.data_ptr<double>();
    for (int64_t p1 = 0; p1 < count;) {
      // The panel [p1, p2): at most kPanel columns, ending before a column
      // whose grid reads ahead.
      int64_t p2 = std::min(p1 + kPanel, count);
      for (int64_t j = p1 + 1; j < p2; ++j) {
        if (grids->ReadsAhead(i1 + j)) p2 = j;
      }
      for (int64_t i = p1; i < p2; ++i) {
        at::Tensor w = B.select(0, i);
        // Q[:, j] = quant(W[:, j]), on the grid the strategy gives column j.
        grids->Select(Sweep{W_view, W1_view, Err1_view, Hinv, i1, i2, i1 + i, o.group_params_from});
        at::Tensor code;
        at::Tensor q = grids->Quantize(w, &code);
        Qt.select(0, i1 + i).copy_(q);
        Ct.select(0, i1 + i).copy_(code);
        // E[:, j] = (W[:, j] - Q[:, j]) / [H^-1]_jj
        at::Tensor e = E.select(0, i);
        at::sub_out(e, w, q).div_(d[i]);
        // W[:, j+1:p2] -= E[:, j] [H^-1]_{j, j+1:p2}, inside the panel.
        if (i + 1 < p2) B.narrow(0, i + 1, p2 - i - 1).addr_(Hinv1[i].narrow(0, i + 1, p2 - i - 1), e, 1, -1);
      }
      // The panel's errors over the rest of the block.
      if (p2 < count) {
        B.narrow(0, p2, count - p2)
            .addmm_(Hinv1.narrow(0, p1, p2 - p1).narrow(1, p2, count - p2).t(), E.narrow(0, p1, p2 - p1),
                    /*beta=*/1, /*alpha=*/-1);
      }
      p1 = p2;
    }
    // The lazy batch update: W[:, i2:] -= E [H^-1]_{i1:i2, i2:}
    if (i2 < columns) {
      Wt.narrow(0, i2, columns - i2)
          .addmm_(Hinv.narrow(0, i1, count).narrow(1, i2, columns - i2).t(), E, /*beta=*/1, /*alpha=*/-1);
    }
  }
  at::Tensor Q = Qt.t().contiguous(), codes = Ct.t().contiguous();
  return grids->Finish(std::move(Q), std::move(codes), invperm);
}

}  // namespace qaas::quant
