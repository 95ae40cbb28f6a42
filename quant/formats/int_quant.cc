#include "quant/formats/int_quant.h"

namespace qaas::quant {
namespace {
thread_local at::ScalarType scale_dtype = at::kHalf;
}  // namespace

at::ScalarType ScaleDType() { return scale_dtype; }
ScaleDTypeScope::ScaleDTypeScope(at::ScalarType dtype) : previous_(scale_dtype) { scale_dtype = dtype; }
ScaleDTypeScope::~ScaleDTypeScope() { scale_dtype = previous_; }

int64_t GroupSize(const TensorQuant& spec, int64_t in) {
  if (spec.granularity == Granularity::kPerGroup && spec.group_size > 0 && spec.group_size < in) {
    return spec.group_size;
  }
  return in;
}

at::Tensor RoundSte(const at::Tensor& x) {
  if (!x.requires_grad()) return at::round(x);
  // round(x) + (x - x): exactly round(x) forward, d/dx = 1 backward.
  return at::round(x.detach()) + (x - x.detach());
}

void RangeToScaleZero(const at::Tensor& xmin_in, const at::Tensor& xmax_in, int bits,
                      bool symmetric, at::Tensor* scale, at::Tensor* zero) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  at::Tensor xmin = at::clamp_max(xmin_in, 0.0);
  at::Tensor xmax = at::clamp_min(xmax_in, 0.0);
  if (symmetric) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = -xmax;
  }
  // An all-zero row would give scale 0: use the range [-1, 1] as GPTQ does.
  at::Tensor empty = (xmin == 0) & (xmax == 0);
  xmin = at::where(empty, at::full_like(xmin, -1.0), xmin);
  xmax = at::where(empty, at::full_like(xmax, 1.0), xmax);
  at::Tensor s = (xmax - xmin) / maxq;
  if (!symmetric) {
    // Zero points stay in [1, maxq]: the GPTQ checkpoint stores zero - 1, and
    // loaders disagree on a stored -1 (GPTQModel/Transformers add 1 to the
    // packed word and carry into the next channel, AutoGPTQ/vLLM add 1 per
    // field and read 2^b). Groups whose zero would round to 0 (all weights
    // >= 0, or nearly) widen their scale so that code 1 is zero instead.
    at::Tensor low = at::round(-xmin / at::clamp_min(s, 6e-8)) < 1;
    s = at::where(low, at::maximum(xmax / (maxq - 1), -xmin), s);
  }
  // float16-representable (or bfloat16: ScaleDType) and never zero (6e-8 is
  // float16's smallest subnormal).
  s = at::clamp_min(s, 6e-8);
  at::Tensor s16 = s.detach().to(ScaleDType()).to(at::kFloat);
  // Straight through the float16 rounding when learning (no float16 gradients).
  s = s.requires_grad() ? s16 + (s - s.detach()) : s16;
  *scale = s;
  if (symmetric) {
    *zero = at::full_like(s, static_cast<double>(1 << (bits - 1)));
  } else {
    *zero = at::clamp(RoundSte(-xmin / s), 1.0, maxq);
  }
}

int StoredGroupSize(const TensorQuant& spec, int64_t in) {
  const int64_t g = GroupSize(spec, in);
  return g == in ? 0 : static_cast<int>(g);
}

void GroupRanges(const at::Tensor& w, const TensorQuant& spec, at::Tensor* xmin, at::Tensor* xmax) {
  const int64_t out = w.size(0), in = w.size(1);
  if (spec.granularity == Granularity::kPerTensor) {
    *xmin = w.min().reshape({1, 1}).expand({out, 1});
    *xmax = w.max().reshape({1, 1}).expand({out, 1});
    return;
  }
  const int64_t g = GroupSize(spec, in);
  const int64_t groups = (in + g - 1) / g;
  at::Tensor padded = w;
  if (groups * g != in) {
    // A ragged last group: pad with its own first column so the range is unchanged.
    at::Tensor last = w.narrow(1, (groups - 1) * g, 1);
    padded = at::cat({w, last.expand({out, groups * g - in})}, 1);
  }
  at::Tensor grouped = padded.reshape({out, groups, g});
  *xmin = std::get<0>(grouped.min(-1));
  *xmax = std::get<0>(grouped.max(-1));
}

IntQuantParams ComputeIntParams(const at::Tensor& w, const TensorQuant& spec) {
  IntQuantParams p;
  p.bits = spec.bits;
  p.symmetric = spec.symmetric;
  p.group_size = StoredGroupSize(spec, w.size(1));
  at::Tensor xmin, xmax;
  GroupRanges(w, spec, &xmin, &xmax);
  RangeToScaleZero(xmin.contiguous(), xmax.contiguous(), p.bits, p.symmetric, &p.scale, &p.zero);
  return p;
}

at::Tensor ExpandGroups(const at::Tensor& t, int group_size, int64_t in) {
  return t.repeat_interleave(group_size == 0 ? in : group_size, 1).narrow(1, 0, in);
}

at::Tensor GroupIndex(const IntQuantParams& p, int64_t in) {
  const int64_t g = p.group_size == 0 ? in : p.group_size;
  return at::div(at::arange(in, at::TensorOptions().dtype(at::kLong)), g, "floor").to(at::kInt);
}

at::Tensor QuantizeToCodes(const at::Tensor& w, const IntQuantParams& p) {
  const int64_t in = w.size(1);
  const double maxq = static_cast<double>((1 << p.bits) - 1);
  at::Tensor scale = ExpandGroups(p.scale, p.group_size, in), zero = ExpandGroups(p.zero, p.group_size, in);
  return at::clamp(at::round(w / scale) + zero, 0.0, maxq).to(at::kInt);
}

at::Tensor DequantizeCodes(const at::Tensor& codes, const IntQuantParams& p) {
  const int64_t in = codes.size(1);
  at::Tensor scale = ExpandGroups(p.scale, p.group_size, in), zero = ExpandGroups(p.zero, p.group_size, in);
  return (codes.to(at::kFloat) - zero) * scale;
}

at::Tensor FakeQuantizeColumns(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero,
                               int bits) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  at::Tensor q = at::clamp(RoundSte(w / scale) + zero, 0.0, maxq);
  return (q - zero) * scale;
}

}  // namespace qaas::quant
