#include "quant/formats/act_quant.h"

#include "quant/formats/int_quant.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/formats/number_format.h"
#include "quant/formats/per_token_kernel.h"

namespace qaas::quant {

const char* ActPointName(ActPoint p) {
  switch (p) {
    case ActPoint::kAttnIn: return "attn_in";
    case ActPoint::kAttnOut: return "attn_out";
    case ActPoint::kMlpIn: return "mlp_in";
    case ActPoint::kMlpHidden: return "mlp_hidden";
  }
  return "?";
}

namespace {

// Smallest scale we divide by: keeps all-zero rows finite (they stay zero).
constexpr double kMinScale = 1e-12;

double SymmetricMax(int bits) { return static_cast<double>((1 << (bits - 1)) - 1); }
double AsymmetricMax(int bits) { return static_cast<double>((1 << bits) - 1); }

}  // namespace

at::Tensor FakeQuantizePerToken(const at::Tensor& x, int bits, bool symmetric) {
  at::Tensor fused = FakeQuantizePerTokenKernel(x, bits, symmetric);
  return fused.defined() ? fused : FakeQuantizePerTokenFormula(x, bits, symmetric);
}

at::Tensor FakeQuantizePerTokenFormula(const at::Tensor& x, int bits, bool symmetric) {
  if (symmetric) {
    const double qmax = SymmetricMax(bits);
    at::Tensor scale = at::clamp_min(std::get<0>(x.abs().max(-1, /*keepdim=*/true)) / qmax, kMinScale);
    return at::clamp(at::round(x / scale), -qmax, qmax) * scale;
  }
  const double qmax = AsymmetricMax(bits);
  at::Tensor lo = std::get<0>(x.min(-1, true)), hi = std::get<0>(x.max(-1, true));
  at::Tensor scale = at::clamp_min((hi - lo) / qmax, kMinScale);
  at::Tensor zero = at::round(-lo / scale);
  return (at::clamp(at::round(x / scale) + zero, 0.0, qmax) - zero) * scale;
}

at::Tensor FakeQuantizeStatic(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero, int bits) {
  if (!zero.defined()) {
    const double qmax = SymmetricMax(bits);
    return at::clamp(at::round(x / scale), -qmax, qmax) * scale;
  }
  const double qmax = AsymmetricMax(bits);
  return (at::clamp(at::round(x / scale) + zero, 0.0, qmax) - zero) * scale;
}

at::Tensor ActQuantizer::operator()(const at::Tensor& x) const {
  if (enabled() && x.requires_grad()) {
    // Learning through the quantizer (OmniQuant): the quantized values
    // forward, the identity backward (straight-through estimator).
    return (*this)(x.detach()) + (x - x.detach());
  }
  switch (spec.format) {
    case NumberFormat::kNone: return x;
    case NumberFormat::kInt:
      if (is_static()) return FakeQuantizeStatic(x, scale, zero, spec.bits);
      return FakeQuantizePerToken(x, spec.bits, spec.symmetric);
    case NumberFormat::kMxInt:
    case NumberFormat::kMxFp: return FakeQuantizeMx(x, *ElementFormatOf(spec));
    case NumberFormat::kFp8E4M3:
    case NumberFormat::kFp8E5M2: {
      // Per token (activations: one scale per row) or per tensor (the KV cache).
      const ElementFormat e = *ElementFormatOf(spec);
      const at::Tensor amax = spec.granularity == Granularity::kPerToken ? x.abs().amax(-1, true) : x.abs().max();
      at::Tensor s = at::clamp_min(amax / Traits(e).max_value, kMinScale);
      return RoundToElement(x / s, e) * s;
    }
  }
  return x;
}

ActQuantizer ActQuantizer::To(const at::Device& device) const {
  ActQuantizer out = *this;
  if (scale.defined()) out.scale = scale.to(device);
  if (zero.defined()) out.zero = zero.to(device);
  return out;
}

LayerActQuant LayerActQuant::To(const at::Device& device) const {
  LayerActQuant out;
  for (int i = 0; i < kNumActPoints; ++i) out.inputs[i] = inputs[i].To(device);
  out.kv = kv.To(device);
  return out;
}

absl::Status CheckActivationSpec(const TensorQuant& spec, const std::string& kind) {
  switch (spec.format) {
    case NumberFormat::kNone:
    case NumberFormat::kMxInt:
    case NumberFormat::kMxFp:
    case NumberFormat::kFp8E4M3:
    case NumberFormat::kFp8E5M2: return absl::OkStatus();
    case NumberFormat::kInt:
      if (spec.granularity == Granularity::kPerToken || spec.granularity == Granularity::kPerTensor ||
          spec.granularity == Granularity::kPerHead) {
        return absl::OkStatus();
      }
      return absl::UnimplementedError(absl::StrCat(kind, ": integer granularity ",
                                                   GranularityName(spec.granularity),
                                                   " is not simulated (per_token or per_tensor)"));
  }
  return absl::InvalidArgumentError(absl::StrCat(kind, ": unknown format"));
}

ActQuantizer DynamicQuantizer(const TensorQuant& spec) {
  ActQuantizer q;
  q.spec = spec;
  return q;
}

ActQuantizer StaticPerTensorQuantizer(const TensorQuant& spec, double min, double max) {
  ActQuantizer q;
  q.spec = spec;
  auto opts = at::TensorOptions().dtype(at::kFloat);
  if (spec.symmetric) {
    q.scale = at::full({}, std::max(std::max(std::abs(min), std::abs(max)) / SymmetricMax(spec.bits), kMinScale), opts);
    // A bfloat16 model's compressed-tensors artifact stores input_scale in
    // bfloat16 (formats/int_quant.h's ScaleDType).
    if (ScaleDType() == at::kBFloat16) q.scale = q.scale.to(at::kBFloat16).to(at::kFloat);
  } else {
    const double s = std::max((max - min) / AsymmetricMax(spec.bits), kMinScale);
    q.scale = at::full({}, s, opts);
    q.zero = at::full({}, std::round(-min / s), opts);
  }
  return q;
}

ActQuantizer StaticPerChannelQuantizer(const TensorQuant& spec, const at::Tensor& min, const at::Tensor& max) {
  ActQuantizer q;
  q.spec = spec;
  q.spec.symmetric = false;
  q.scale = at::clamp_min((max - min) / AsymmetricMax(spec.bits), kMinScale).to(at::kFloat);
  q.zero = at::round(-min.to(at::kFloat) / q.scale);
  return q;
}

}  // namespace qaas::quant
