#include "quant/methods/smoothquant.h"

#include "absl/strings/str_cat.h"

namespace qaas::quant {

at::Tensor SmoothingScales(const at::Tensor& act_absmax, const at::Tensor& weight_absmax, double alpha) {
  at::Tensor a = act_absmax.to(at::kFloat), w = weight_absmax.to(at::kFloat);
  at::Tensor s = at::pow(a, alpha) / at::pow(w, 1.0 - alpha);
  at::Tensor degenerate = (a == 0) | (w == 0) | at::isnan(s) | at::isinf(s);
  return at::clamp_min(at::where(degenerate, at::ones_like(s), s), 1e-5);
}

absl::StatusOr<at::Tensor> SmoothLayer(const DecoderModel& model, ActPoint p, const at::Tensor& act_absmax,
                                       const SmoothQuantOptions& options, DecoderLayer* layer) {
  if (p != ActPoint::kAttnIn && p != ActPoint::kMlpIn) {
    return absl::InvalidArgumentError(absl::StrCat("SmoothQuant folds into norms; ", ActPointName(p),
                                                   " has none"));
  }
  const BlockNorm norm = model.NormOf(p);
  at::Tensor weight = norm.weight.empty() ? at::Tensor() : layer->norm(norm.weight);
  if (!weight.defined()) {
    return absl::FailedPreconditionError(absl::StrCat("SmoothQuant: the norm before ", ActPointName(p),
                                                      " has no affine weight to fold the scales into"));
  }
  if (layer->norm(norm.reorder).defined()) {
    return absl::FailedPreconditionError("SmoothQuant: apply it before RPTQ reorders the layer");
  }
  const std::vector<int>& consumers = model.ConsumersOf(p);
  at::Tensor wmax;
  for (int j : consumers) {
    at::Tensor m = std::get<0>(layer->linears[j].weight.abs().max(0));
    wmax = wmax.defined() ? at::maximum(wmax, m) : m;
  }
  at::Tensor s = SmoothingScales(act_absmax.to(wmax.device()), wmax, options.alpha);
  layer->set_norm(norm.weight, weight / s);
  if (!norm.bias.empty()) {
    at::Tensor bias = layer->norm(norm.bias);
    if (bias.defined()) layer->set_norm(norm.bias, bias / s);
  }
  for (int j : consumers) layer->linears[j].weight = layer->linears[j].weight * s;
  // A mixture of experts' router (and shared-expert gate) reads the smoothed
  // input too: its columns take s, so routing is unchanged. (They stay float:
  // their ranges do not enter s.)
  for (const std::string& name : model.FloatReadersOf(p)) {
    const at::Tensor reader = layer->norm(name);
    if (!reader.defined()) return absl::FailedPreconditionError(absl::StrCat("SmoothQuant: the layer has no ", name));
    layer->set_norm(name, reader * s.to(reader.scalar_type()));
  }
  return s;
}

}  // namespace qaas::quant
