#include "quant/methods/gptq.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quant/formats/number_format.h"

namespace qaas::quant {

HessianAccumulator::HessianAccumulator(int64_t columns, const at::Device& device)
    : H_(at::zeros({columns, columns}, at::TensorOptions().dtype(at::kFloat).device(device))) {}

void HessianAccumulator::Add(const at::Tensor& x_in) {
  at::Tensor x = x_in.reshape({-1, x_in.size(-1)}).to(at::kFloat);
  const int64_t tmp = x.size(0);
  if (tmp == 0) return;
  // Running mean: H_n = n/(n+t) H_{n-1} + 2/(n+t) X^T X.
  H_.mul_(static_cast<double>(n_) / static_cast<double>(n_ + tmp));
  n_ += tmp;
  x = x * std::sqrt(2.0 / static_cast<double>(n_));
  H_.addmm_(x.t(), x);
}

namespace {

// Quantize-dequantize a column vector w [rows] with per-row scale/zero [rows].
at::Tensor Quant(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero, double maxq,
                 at::Tensor* code) {
  *code = at::clamp(at::round(w / scale) + zero, 0.0, maxq);
  return (*code - zero) * scale;
}

// Min-max parameters of W's columns [c0, c1) per row: scale/zero [rows].
void FindParams(const at::Tensor& block, int bits, bool symmetric, at::Tensor* scale, at::Tensor* zero) {
  RangeToScaleZero(std::get<0>(block.min(1)), std::get<0>(block.max(1)), bits, symmetric, scale, zero);
}

}  // namespace

absl::StatusOr<QuantizedLinear> QuantizeGptq(const at::Tensor& W_in, const at::Tensor& H_in,
                                             const TensorQuant& spec, const GptqOptions& o,
                                             GptqStats* stats) {
  const int64_t rows = W_in.size(0), columns = W_in.size(1);
  if (H_in.dim() != 2 || H_in.size(0) != columns || H_in.size(1) != columns) {
    return absl::InvalidArgumentError(absl::StrCat("GPTQ: Hessian is [", H_in.size(0), ", ", H_in.size(1),
                                                   "] but the weight has ", columns, " columns"));
  }
  GptqStats local;
  GptqStats& st = stats ? *stats : local;
  const int bits = spec.bits;
  const double maxq = static_cast<double>((1 << bits) - 1);
  // MX weights: each block of 32 input columns shares one power-of-two scale
  // per row, found (like GPTQ's groups) from the block's columns as updated
  // when the block's first column comes up.
  const bool mx = spec.is_mx();
  if (mx && (o.act_order || o.static_groups || o.per_input_channel)) {
    return absl::InvalidArgumentError(
        "GPTQ: MX weights take neither act_order, static_groups nor per-input-channel groups (their blocks are "
        "fixed runs of 32 input columns)");
  }
  if (!mx && spec.format != NumberFormat::kInt) {
    return absl::UnimplementedError(
        absl::StrCat("GPTQ: weight format ", NumberFormatName(spec.format), " is not supported"));
  }
  const ElementFormat element = mx ? *ElementFormatOf(spec) : ElementFormat::kInt8;
  const int64_t groupsize = mx ? kMxBlockSize : spec.granularity == Granularity::kPerGroup ? spec.group_size : -1;

  at::Tensor W = W_in.to(at::kFloat).clone();
  at::Tensor H = H_in.clone();
  // Dead inputs carry no information: fix their diagonal and zero their weights.
  at::Tensor dead = H.diagonal() == 0;
  st.dead_columns = static_cast<int>(dead.sum().item<int64_t>());
  H.diagonal().masked_fill_(dead, 1.0);
  W.index_put_({at::indexing::Slice(), dead}, 0.0);

  // Per-channel / per-tensor parameters come from the whole (original) W.
  at::Tensor scale, zero;
  const bool per_ic = o.per_input_channel;
  // Per-IC groups of `ic_group` rows (the whole column without a group size).
  const int64_t ic_group = groupsize == -1 ? rows : std::min(groupsize, rows);
  const int64_t ic_groups = (rows + ic_group - 1) / ic_group;
  at::Tensor ic_scales, ic_zeros;  // [ic_groups, columns], by position
  if (per_ic) {
    ic_scales = at::zeros({ic_groups, columns}, W.options());
    ic_zeros = at::zeros({ic_groups, columns}, W.options());
  } else if (groupsize == -1 && !mx) {
    IntQuantParams p = ComputeIntParams(W, spec);
    scale = p.scale.select(1, 0).contiguous();
    zero = p.zero.select(1, 0).contiguous();
  }
  // Static groups: every group's parameters from the unmodified W, in the
  // original column order.
  std::vector<std::pair<at::Tensor, at::Tensor>> static_params;
  if (!per_ic && groupsize != -1 && o.static_groups) {
    for (int64_t g = 0; g < columns; g += groupsize) {
      at::Tensor s, z;
      FindParams(W.narrow(1, g, std::min(groupsize, columns - g)), bits, spec.symmetric, &s, &z);
      static_params.emplace_back(s, z);
    }
  }

  at::Tensor perm, invperm;
  if (o.act_order) {
    perm = at::argsort(H.diagonal(), /*dim=*/0, /*descending=*/true);
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
    invperm = at::argsort(perm);
  }
  const std::vector<int64_t> perm_cpu = [&] {
    if (!o.act_order) return std::vector<int64_t>();
    at::Tensor p = perm.to(at::kCPU).contiguous();
    return std::vector<int64_t>(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
  }();

  // Hinv: the upper Cholesky factor of H^-1, after damping H until it is
  // positive definite (more damping on each failed attempt).
  const double mean_diag = H.diagonal().mean().item<double>();
  double damp = o.percdamp * mean_diag;
  at::Tensor Hinv;
  for (int attempt = 0;; ++attempt) {
    at::Tensor Hd = H.clone();
    Hd.diagonal().add_(damp);
    auto [L, info] = at::linalg_cholesky_ex(Hd);
    if (info.item<int64_t>() == 0) {
      at::Tensor Hi = at::cholesky_inverse(L);
      auto [U, info2] = at::linalg_cholesky_ex(Hi, /*upper=*/true);
      if (info2.item<int64_t>() == 0 && !U.isnan().any().item<bool>()) {
        Hinv = U;
        break;
      }
    }
    if (attempt >= o.max_damp_retries) {
      return absl::InternalError(absl::StrCat("GPTQ: Hessian is not positive definite even with damping ",
                                              damp, " (", attempt + 1, " attempts)"));
    }
    ++st.cholesky_retries;
    damp = (damp > 0 ? damp : 1e-8) * 10;
  }
  st.damp = damp;

  at::Tensor Q = at::zeros_like(W);
  at::Tensor codes = at::zeros_like(W);
  const int64_t num_groups = groupsize == -1 ? 1 : (columns + groupsize - 1) / groupsize;
  at::Tensor scales = at::zeros({rows, num_groups}, W.options());
  at::Tensor zeros = at::zeros({rows, num_groups}, W.options());

  for (int64_t i1 = 0; i1 < columns; i1 += o.blocksize) {
    const int64_t i2 = std::min(i1 + o.blocksize, columns), count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone();
    at::Tensor Q1 = at::zeros_like(W1);
    at::Tensor C1 = at::zeros_like(W1);
    at::Tensor Err1 = at::zeros_like(W1);
    at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);
    const at::Tensor diag = Hinv1.diagonal().to(at::kCPU, at::kDouble).contiguous();  // one sync per block
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i;  // position in the (possibly permuted) order
      at::Tensor w = W1.select(1, i);
      const double d = diag.data_ptr<double>()[i];
      if (per_ic) {
        // This column's parameters, per group of ic_group rows, from its current values.
        at::Tensor padded = w;
        if (ic_groups * ic_group != rows) {
          padded = at::cat({w, w.narrow(0, rows - 1, 1).expand({ic_groups * ic_group - rows})});
        }
        at::Tensor grouped = padded.view({ic_groups, ic_group});
        at::Tensor s, z;
        RangeToScaleZero(std::get<0>(grouped.min(1)), std::get<0>(grouped.max(1)), bits, spec.symmetric, &s, &z);
        ic_scales.select(1, col).copy_(s);
        ic_zeros.select(1, col).copy_(z);
        scale = s.repeat_interleave(ic_group).narrow(0, 0, rows);
        zero = z.repeat_interleave(ic_group).narrow(0, 0, rows);
      } else if (mx) {
        if (col % groupsize == 0) {
          const int64_t width = std::min(groupsize, columns - col);
          at::Tensor group = width <= count - i
                                 ? W1.narrow(1, i, width)
                                 : at::cat({W1.narrow(1, i, count - i), W.narrow(1, i2, width - (count - i))}, 1);
          scale = Pow2(MxSharedExponents(group, element)).select(1, 0);
        }
      } else if (groupsize != -1) {
        if (o.static_groups) {
          const int64_t orig = o.act_order ? perm_cpu[col] : col;
          std::tie(scale, zero) = static_params[orig / groupsize];
        } else if (col % groupsize == 0) {
          // Parameters from the group's columns as updated so far (GPTQ's default):
          // the rest of this block from W1, any remainder from W.
          const int64_t width = std::min(groupsize, columns - col);
          at::Tensor group = width <= count - i
                                 ? W1.narrow(1, i, width)
                                 : at::cat({W1.narrow(1, i, count - i), W.narrow(1, i2, width - (count - i))}, 1);
          FindParams(group, bits, spec.symmetric, &scale, &zero);
        }
      }
      at::Tensor code;
      at::Tensor q = mx ? RoundToElement(w / scale, element) * scale : Quant(w, scale, zero, maxq, &code);
      if (mx) code = at::zeros_like(w);
      Q1.select(1, i).copy_(q);
      C1.select(1, i).copy_(code);
      if (!mx && !per_ic && groupsize != -1 && !o.static_groups && col % groupsize == 0) {
        scales.select(1, col / groupsize).copy_(scale);
        zeros.select(1, col / groupsize).copy_(zero);
      }
      at::Tensor err1 = (w - q) / d;
      // W1[:, i:] -= err1 * Hinv1[i, i:]
      W1.narrow(1, i, count - i).sub_(at::outer(err1, Hinv1[i].narrow(0, i, count - i)));
      Err1.select(1, i).copy_(err1);
    }
    Q.narrow(1, i1, count).copy_(Q1);
    codes.narrow(1, i1, count).copy_(C1);
    // Lazy batch update of every later column.
    if (i2 < columns) W.narrow(1, i2, columns - i2).sub_(at::matmul(Err1, Hinv.narrow(0, i1, count).narrow(1, i2, columns - i2)));
  }

  QuantizedLinear out;
  if (mx) {
    out.mx = true;
    out.element = element;
    out.dequantized = Q;
    return out;
  }
  if (per_ic) {
    // Describe W^T: rows of the transpose are input channels, groups run along the outputs.
    if (o.act_order) {
      Q = Q.index_select(1, invperm);
      codes = codes.index_select(1, invperm);
      ic_scales = ic_scales.index_select(1, invperm);
      ic_zeros = ic_zeros.index_select(1, invperm);
    }
    out.per_input_channel = true;
    out.params.bits = bits;
    out.params.symmetric = spec.symmetric;
    out.params.group_size = ic_group == rows ? 0 : static_cast<int>(ic_group);
    out.params.scale = ic_scales.t().contiguous();
    out.params.zero = ic_zeros.t().contiguous();
    out.codes = codes.t().contiguous().to(at::kInt);
    out.g_idx = at::div(at::arange(rows, at::TensorOptions().dtype(at::kLong).device(W.device())), ic_group, "floor")
                    .to(at::kInt);
    out.dequantized = Q;
    return out;
  }
  out.params.bits = bits;
  out.params.symmetric = spec.symmetric;
  out.params.group_size = groupsize == -1 ? 0 : static_cast<int>(groupsize);
  at::Tensor group_of_position = at::div(at::arange(columns, at::TensorOptions().dtype(at::kLong).device(W.device())),
                                         groupsize == -1 ? columns : groupsize, "floor");
  if (groupsize == -1) {
    scales.select(1, 0).copy_(scale);
    zeros.select(1, 0).copy_(zero);
  } else if (o.static_groups) {
    for (int64_t g = 0; g < num_groups; ++g) {
      scales.select(1, g).copy_(static_params[g].first);
      zeros.select(1, g).copy_(static_params[g].second);
    }
  }
  at::Tensor g_idx;
  if (o.act_order) {
    Q = Q.index_select(1, invperm);
    codes = codes.index_select(1, invperm);
    // Column j sat at position invperm[j]; its group is that position's group,
    // except with static groups, where groups follow the original order.
    g_idx = o.static_groups ? group_of_position : group_of_position.index_select(0, invperm);
  } else {
    g_idx = group_of_position;
  }
  out.params.scale = scales;
  out.params.zero = zeros;
  out.codes = codes.to(at::kInt);
  out.g_idx = g_idx.to(at::kInt);
  out.dequantized = Q;
  return out;
}

}  // namespace qaas::quant
