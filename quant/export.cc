#include "quant/export.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/formats/packing.h"
#include "quant/model/checkpoint.h"

namespace qaas::quant {

std::vector<RawTensor> PackGptqLinear(const std::string& prefix, const QuantizedLinear& q,
                                      const at::Tensor& bias) {
  const int bits = q.params.bits;
  const int64_t mask = (int64_t{1} << bits) - 1;
  std::vector<RawTensor> out;
  out.push_back(TensorToRaw(prefix + ".qweight", PackRows(q.codes.t().contiguous(), bits)));
  at::Tensor zeros = at::bitwise_and(q.params.zero.to(at::kLong) - 1, mask).to(at::kInt);  // [out, G]
  // qzeros packs along the output dimension: pack the transpose's rows, transpose back.
  at::Tensor qzeros = PackRows(zeros.contiguous(), bits).t().contiguous();  // [G, out*b/32]
  out.push_back(TensorToRaw(prefix + ".qzeros", qzeros));
  out.push_back(TensorToRaw(prefix + ".scales", q.params.scale.t().contiguous().to(at::kHalf)));
  out.push_back(TensorToRaw(prefix + ".g_idx", q.g_idx.to(at::kInt)));
  if (bias.defined()) out.push_back(TensorToRaw(prefix + ".bias", bias.to(at::kHalf)));
  return out;
}

absl::StatusOr<at::Tensor> UnpackGptqLinear(const std::map<std::string, RawTensor>& tensors,
                                            const std::string& prefix, int bits, int64_t in,
                                            int64_t out) {
  auto get = [&](const std::string& suffix, DType dtype) -> absl::StatusOr<at::Tensor> {
    auto it = tensors.find(prefix + suffix);
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat("missing tensor '", prefix, suffix, "'"));
    }
    if (it->second.dtype != dtype) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", prefix, suffix, "' has dtype ",
                                                     DTypeName(it->second.dtype)));
    }
    return RawToTensor(it->second);
  };
  auto qweight = get(".qweight", DType::kI32);
  auto qzeros = get(".qzeros", DType::kI32);
  auto scales = get(".scales", DType::kF16);
  auto g_idx = get(".g_idx", DType::kI32);
  for (const auto* s : {&qweight, &qzeros, &scales, &g_idx}) {
    if (!s->ok()) return s->status();
  }
  // Every shape is checked before unpacking: UnpackRows trusts its row count.
  if (qweight->dim() != 2 || qzeros->dim() != 2 || scales->dim() != 2 || g_idx->dim() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("packed tensors of '", prefix,
                                                   "' have the wrong number of dimensions"));
  }
  const int64_t groups = scales->size(0);
  if (qweight->size(0) != (in * bits + 31) / 32 || qweight->size(1) != out ||
      scales->size(1) != out || g_idx->numel() != in || qzeros->size(0) != groups ||
      qzeros->size(1) != (out * bits + 31) / 32 || groups == 0) {
    return absl::InvalidArgumentError(absl::StrCat("packed tensors of '", prefix,
                                                   "' do not match a ", out, "x", in, " weight"));
  }
  const int64_t mask = (int64_t{1} << bits) - 1;
  at::Tensor codes = UnpackRows(*qweight, bits, in).t();  // [out, in]
  at::Tensor zeros = at::bitwise_and(UnpackRows(qzeros->t().contiguous(), bits, out).to(at::kLong) + 1, mask);  // [out, G]
  at::Tensor idx = g_idx->to(at::kLong);
  if (idx.min().item<int64_t>() < 0 || idx.max().item<int64_t>() >= groups) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", prefix, ".g_idx' points past ", groups, " groups"));
  }
  at::Tensor scale = scales->to(at::kFloat).t().index_select(1, idx);  // [out, in]
  at::Tensor zero = zeros.to(at::kFloat).index_select(1, idx);
  return (codes.to(at::kFloat) - zero) * scale;
}

nlohmann::json GptqQuantizationConfig(const Scheme& scheme, bool desc_act, bool static_groups,
                                      double damp_percent) {
  const auto& w = scheme.weights;
  return {{"quant_method", "gptq"},
          {"bits", w.bits},
          {"group_size", w.granularity == Granularity::kPerGroup ? w.group_size : -1},
          {"desc_act", desc_act},
          {"static_groups", static_groups},
          {"damp_percent", damp_percent},
          {"sym", w.symmetric},
          {"true_sequential", true},
          {"checkpoint_format", "gptq"}};
}

}  // namespace qaas::quant
