#include "quant/methods/omniquant.h"

#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/formats/int_quant.h"
#include "quant/methods/rptq.h"  // ChannelRange
#include "quant/methods/rtn.h"
#include "quant/methods/smoothquant.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::Status CheckOmniQuantOptions(const OmniQuantOptions& o) {
  if (o.epochs < 0 || o.batch_windows < 1 || !(o.lwc_lr > 0) || !(o.let_lr > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("omniquant: epochs must be >= 0 (0: the paper's), batch_windows "
                                                   ">= 1 and the learning rates lwc_lr, let_lr > 0, got epochs ", o.epochs,
                                                   ", batch_windows ", o.batch_windows, ", lwc_lr ", o.lwc_lr,
                                                   ", let_lr ", o.let_lr));
  }
  return absl::OkStatus();
}

int OmniQuantEpochs(const OmniQuantOptions& options, const TensorQuant& weights) {
  if (options.epochs > 0) return options.epochs;
  return weights.enabled() && weights.bits <= 2 ? 40 : 20;
}

namespace {

// The clipped ranges [out, groups] of w's groups.
void ClippedRanges(const at::Tensor& w, const TensorQuant& spec, const at::Tensor& gamma, const at::Tensor& beta,
                   at::Tensor* xmin, at::Tensor* xmax) {
  GroupRanges(w, spec, xmin, xmax);
  *xmin = *xmin * beta;
  *xmax = *xmax * gamma;
}

}  // namespace

std::vector<int64_t> ClippingShape(const at::Tensor& w, const TensorQuant& spec) {
  if (spec.granularity == Granularity::kPerTensor) return {1, 1};
  const int64_t g = GroupSize(spec, w.size(1));
  return {w.size(0), (w.size(1) + g - 1) / g};
}

at::Tensor LwcFakeQuantize(const at::Tensor& w, const TensorQuant& spec, const at::Tensor& gamma,
                           const at::Tensor& beta) {
  at::Tensor xmin, xmax, scale, zero;
  ClippedRanges(w, spec, gamma, beta, &xmin, &xmax);
  RangeToScaleZero(xmin, xmax, spec.bits, spec.symmetric, &scale, &zero);
  const int64_t in = w.size(1);
  const int group_size = StoredGroupSize(spec, in);
  // As QuantizeToCodes then DequantizeCodes, with straight-through rounding.
  return FakeQuantizeColumns(w, ExpandGroups(scale, group_size, in), ExpandGroups(zero, group_size, in), spec.bits);
}

QuantizedLinear LwcQuantize(const at::Tensor& w, const TensorQuant& spec, const at::Tensor& gamma,
                            const at::Tensor& beta) {
  c10::NoGradGuard no_grad;
  at::Tensor xmin, xmax;
  ClippedRanges(w.detach(), spec, gamma.detach(), beta.detach(), &xmin, &xmax);
  IntQuantParams p;
  p.bits = spec.bits;
  p.symmetric = spec.symmetric;
  p.group_size = StoredGroupSize(spec, w.size(1));
  RangeToScaleZero(xmin.contiguous(), xmax.contiguous(), spec.bits, spec.symmetric, &p.scale, &p.zero);
  return QuantizeWithParams(w.detach(), std::move(p));
}

namespace {

int LinearIndexOf(const DecoderModel& model, const std::string& name) {
  const auto& names = model.LinearNames();
  for (size_t j = 0; j < names.size(); ++j) {
    if (names[j] == name) return static_cast<int>(j);
  }
  return -1;
}

// Folds scale s and shift delta at the norm-fed point p.
absl::Status FoldNormPoint(const DecoderModel& model, ActPoint p, const at::Tensor& s, const at::Tensor& delta,
                           DecoderLayer* layer) {
  if (!s.defined()) return absl::OkStatus();
  const BlockNorm norm = model.NormOf(p);
  at::Tensor weight = norm.weight.empty() ? at::Tensor() : layer->norm(norm.weight);
  if (!weight.defined()) {
    return absl::FailedPreconditionError(
        absl::StrCat("OmniQuant LET: the norm before ", ActPointName(p), " has no affine weight"));
  }
  if (!norm.reorder.empty() && layer->norm(norm.reorder).defined()) {
    return absl::FailedPreconditionError("OmniQuant LET: the layer is RPTQ-reordered");
  }
  layer->set_norm(norm.weight, weight / s);
  if (delta.defined()) {
    at::Tensor bias = norm.bias.empty() ? at::Tensor() : layer->norm(norm.bias);
    if (!bias.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("OmniQuant LET: a shift at ", ActPointName(p),
                                                     " needs the norm's bias to fold into"));
    }
    layer->set_norm(norm.bias, (bias - delta) / s);
  }
  for (int j : model.ConsumersOf(p)) {
    Linear& l = layer->linears[j];
    if (delta.defined()) {
      if (!l.bias.defined()) {
        return absl::InvalidArgumentError(absl::StrCat("OmniQuant LET: a shift at ", ActPointName(p),
                                                       " needs ", model.LinearNames()[j], " to have a bias"));
      }
      l.bias = l.bias + at::mv(l.weight, delta);  // with the columns as they were
    }
    l.weight = l.weight * s;
  }
  // A mixture of experts' router and shared-expert gate read p too (no bias:
  // FoldNormPoint's callers give MoE models no shift).
  for (const std::string& name : model.FloatReadersOf(p)) {
    const at::Tensor reader = layer->norm(name);
    if (!reader.defined()) {
      return absl::FailedPreconditionError(absl::StrCat("OmniQuant LET: the layer has no ", name));
    }
    if (delta.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("OmniQuant LET: a shift at ", ActPointName(p), " would need ",
                                                     name, " to have a bias"));
    }
    layer->set_norm(name, reader * s);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DecoderLayer> ApplyLet(const DecoderModel& model, const DecoderLayer& layer, const LetParams& let) {
  DecoderLayer out = layer;  // shares the tensors; every fold below makes new ones
  QAAS_RETURN_IF_ERROR(FoldNormPoint(model, ActPoint::kAttnIn, let.attn_scale, let.attn_shift, &out));
  QAAS_RETURN_IF_ERROR(FoldNormPoint(model, ActPoint::kMlpIn, let.mlp_scale, let.mlp_shift, &out));
  if (let.qk_scale.defined()) {
    const ModelConfig& c = model.config();
    const QueryKeyLayout layout = model.QueryKey();
    // Rotary models share one factor between the two channels of a rotated pair.
    const at::Tensor s = layout.Expand(let.qk_scale);
    if (!layout.q_norm.empty()) {
      // q/k RMSNorms sit between the projections and RoPE: the scale goes
      // into their (head-shared) weights, [head_dim].
      const at::Tensor qn = out.norm(layout.q_norm), kn = out.norm(layout.k_norm);
      if (!qn.defined() || !kn.defined()) {
        return absl::FailedPreconditionError(absl::StrCat("OmniQuant LET: the layer has no ", layout.q_norm, " / ",
                                                          layout.k_norm));
      }
      out.set_norm(layout.q_norm, qn / s);
      out.set_norm(layout.k_norm, kn * s);
      return out;
    }
    const int qi = LinearIndexOf(model, "self_attn.q_proj"), ki = LinearIndexOf(model, "self_attn.k_proj");
    if (qi < 0 || ki < 0) return absl::FailedPreconditionError("OmniQuant LET: the model has no q_proj/k_proj");
    const int64_t nkv = c.num_kv_heads, hd = c.head_dim, group = c.num_heads / c.num_kv_heads;
    // Per K row, [kv_heads * head_dim]; each query head takes its KV head's.
    at::Tensor sk = s.reshape({nkv * hd});
    at::Tensor sq = sk.view({nkv, hd}).repeat_interleave(group, 0).reshape({-1});
    Linear& q = out.linears[qi];
    Linear& k = out.linears[ki];
    q.weight = q.weight / sq.unsqueeze(1);
    if (q.bias.defined()) q.bias = q.bias / sq;
    k.weight = k.weight * sk.unsqueeze(1);
    if (k.bias.defined()) k.bias = k.bias * sk;
  }
  return out;
}

namespace {

// Adam (AdamW with weight decay 0, as the paper trains) over one parameter group.
class Adam {
 public:
  Adam(std::vector<at::Tensor> params, double lr) : params_(std::move(params)), lr_(lr) {
    for (const auto& p : params_) {
      m_.push_back(at::zeros_like(p));
      v_.push_back(at::zeros_like(p));
    }
  }
  void Step() {
    c10::NoGradGuard no_grad;
    ++t_;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double c1 = 1 - std::pow(b1, t_), c2 = 1 - std::pow(b2, t_);
    for (size_t i = 0; i < params_.size(); ++i) {
      at::Tensor& p = params_[i];
      if (!p.grad().defined()) continue;
      const at::Tensor g = p.grad();
      m_[i].mul_(b1).add_(g, 1 - b1);
      v_[i].mul_(b2).addcmul_(g, g, 1 - b2);
      p.sub_((m_[i] / c1) / ((v_[i] / c2).sqrt() + eps) * lr_);
      p.mutable_grad() = at::Tensor();
    }
  }

 private:
  std::vector<at::Tensor> params_;
  double lr_;
  std::vector<at::Tensor> m_, v_;
  int t_ = 0;
};

at::Tensor Learnable(const at::Tensor& init) { return init.detach().clone().requires_grad_(true); }

nlohmann::json Range(const at::Tensor& t) {
  return {t.min().item<double>(), t.max().item<double>()};
}

}  // namespace

absl::StatusOr<OmniQuantResult> OmniQuantLayer(const DecoderModel& model, const DecoderLayer& layer,
                                               const at::Tensor& inputs, const at::Tensor& targets,
                                               const TensorQuant& weights, bool let,
                                               const OmniQuantOptions& options,
                                               const std::function<bool(int, double)>& on_epoch) {
  const auto start = std::chrono::steady_clock::now();
  if (weights.enabled() && weights.format != NumberFormat::kInt) {
    return absl::InvalidArgumentError("OmniQuant's clipping (LWC) learns integer weight ranges, not MX blocks");
  }
  if (!inputs.defined() || inputs.size(0) == 0 || !inputs.sizes().equals(targets.sizes())) {
    return absl::InvalidArgumentError("OmniQuant needs calibration inputs and targets of one shape");
  }
  QAAS_RETURN_IF_ERROR(CheckOmniQuantOptions(options));
  const bool lwc = weights.enabled();
  const int epochs = OmniQuantEpochs(options, weights);
  const std::vector<std::string>& names = model.LinearNames();
  const ModelConfig& c = model.config();

  // LET starts from SmoothQuant's scales (and, with biases, OS+'s shift to
  // the middle of each channel's range) on the float layer's activations.
  // Scales are learned as their logarithms: Adam's steps are then relative
  // (let_lr 5e-3 is 0.5% per step whatever the scale's magnitude) and a scale
  // can neither reach zero nor change sign. (The paper learns s directly;
  // on models whose SmoothQuant scales are far below 1, such as stories260k,
  // that drives some through zero.) `params` holds log-scales and shifts.
  LetParams params;
  if (let) {
    ChannelRange attn_in, mlp_in;
    std::map<std::string, ChannelRange*> observed;
    for (int j : model.ObserversOf(ActPoint::kAttnIn)) observed[names[j]] = &attn_in;
    for (int j : model.ObserversOf(ActPoint::kMlpIn)) observed[names[j]] = &mlp_in;
    DecoderLayer plain = layer;
    plain.act = nullptr;
    ForwardBatched(model, plain, inputs, 8, [&](const std::string& name, const at::Tensor& x) {
      auto it = observed.find(name);
      if (it != observed.end()) it->second->Add(x);
    });
    auto init = [&](ActPoint p, const ChannelRange& r, at::Tensor* scale, at::Tensor* shift) {
      const BlockNorm norm = model.NormOf(p);
      bool biased = !norm.bias.empty() && layer.norm(norm.bias).defined();
      at::Tensor wmax;
      for (int j : model.ConsumersOf(p)) {
        biased = biased && layer.linears[j].bias.defined();
        at::Tensor m = std::get<0>(layer.linears[j].weight.abs().max(0));
        wmax = wmax.defined() ? at::maximum(wmax, m) : m;
      }
      at::Tensor absmax = at::maximum(r.min.abs(), r.max.abs());
      if (biased) {
        *shift = Learnable((r.max + r.min) / 2);
        absmax = (r.max - r.min) / 2;
      }
      *scale = Learnable(at::log(SmoothingScales(absmax, wmax, options.let_alpha)));
    };
    init(ActPoint::kAttnIn, attn_in, &params.attn_scale, &params.attn_shift);
    init(ActPoint::kMlpIn, mlp_in, &params.mlp_scale, &params.mlp_shift);
    const int64_t nkv = c.num_kv_heads, hd = c.head_dim;
    const QueryKeyLayout layout = model.QueryKey();
    const int64_t per_head = layout.Factors(hd);
    params.qk_scale = Learnable(layout.q_norm.empty() ? at::zeros({nkv, per_head}, inputs.options())
                                                      : at::zeros({per_head}, inputs.options()));
  }
  // LWC: logits of gamma and beta per linear, sigmoid(4) ~ 0.982 to start.
  std::vector<at::Tensor> upper(names.size()), lower(names.size());
  if (lwc) {
    for (size_t j = 0; j < names.size(); ++j) {
      const auto shape = ClippingShape(layer.linears[j].weight, weights);
      upper[j] = Learnable(at::full(shape, 4.0, inputs.options()));
      lower[j] = Learnable(at::full(shape, 4.0, inputs.options()));
    }
  }
  std::vector<at::Tensor> let_tensors, lwc_tensors;
  for (const at::Tensor& t : {params.attn_scale, params.attn_shift, params.mlp_scale, params.mlp_shift, params.qk_scale}) {
    if (t.defined()) let_tensors.push_back(t);
  }
  if (lwc) {
    lwc_tensors = upper;
    lwc_tensors.insert(lwc_tensors.end(), lower.begin(), lower.end());
  }
  Adam let_opt(let_tensors, options.let_lr), lwc_opt(lwc_tensors, options.lwc_lr);

  // LET's parameters from the learned log-scales and shifts.
  auto let_params = [&] {
    LetParams p = params;
    for (at::Tensor* t : {&p.attn_scale, &p.mlp_scale, &p.qk_scale}) {
      if (t->defined()) *t = at::exp(*t);
    }
    return p;
  };
  // The layer the parameters describe: LET folded, weights fake-quantized.
  auto build = [&]() -> absl::StatusOr<DecoderLayer> {
    DecoderLayer l = layer;
    if (let) {
      QAAS_ASSIGN_OR_RETURN(l, ApplyLet(model, layer, let_params()));
    }
    if (lwc) {
      for (size_t j = 0; j < names.size(); ++j) {
        l.linears[j].weight = LwcFakeQuantize(l.linears[j].weight, weights, at::sigmoid(upper[j]), at::sigmoid(lower[j]));
      }
    }
    return l;
  };

  // The mean squared error of `l` on windows [i, i + b).
  auto block_loss = [&](const DecoderLayer& l, int64_t i, int64_t b) {
    return (model.LayerForward(l, inputs.narrow(0, i, b)) - targets.narrow(0, i, b)).pow(2).mean();
  };
  const int64_t n = inputs.size(0), bw = options.batch_windows;

  // The block's loss over every window. (The per-epoch losses are means over
  // steps taken while the parameters move, too noisy to compare.)
  auto mean_loss = [&](const DecoderLayer& l) {
    double sum = 0;
    for (int64_t i = 0; i < n; i += bw) sum += block_loss(l, i, std::min(bw, n - i)).item<double>();
    return sum / ((n + bw - 1) / bw);
  };
  // The stored block at the current parameters: LET folded for good, the
  // weights clipped and quantized to codes, and its loss over every window
  // as training measured it.
  auto store = [&](nlohmann::json* details) -> absl::StatusOr<std::pair<OmniQuantResult, double>> {
    c10::NoGradGuard no_grad;
    OmniQuantResult result;
    result.folded = layer;
    LetParams learned;
    if (let) {
      learned = let_params();
      QAAS_ASSIGN_OR_RETURN(result.folded, ApplyLet(model, layer, learned));
    }
    // Fresh tensors, outside any graph.
    for (auto& [name, t] : result.folded.norms) t = t.detach();
    for (auto& l : result.folded.linears) {
      l.weight = l.weight.detach();
      if (l.bias.defined()) l.bias = l.bias.detach();
    }
    DecoderLayer stored = result.folded;
    if (lwc) {
      double gamma = 0, beta = 0;
      int64_t count = 0;
      for (size_t j = 0; j < names.size(); ++j) {
        at::Tensor g = at::sigmoid(upper[j]).detach(), b = at::sigmoid(lower[j]).detach();
        result.linears.push_back(LwcQuantize(result.folded.linears[j].weight, weights, g, b));
        stored.linears[j].weight = result.linears.back().dequantized;
        result.gamma.push_back(g);
        result.beta.push_back(b);
        gamma += g.sum().item<double>();
        beta += b.sum().item<double>();
        count += g.numel();
      }
      (*details)["lwc"] = {{"gamma_mean", gamma / count}, {"beta_mean", beta / count}};
    }
    if (let) {
      for (at::Tensor* t : {&learned.attn_scale, &learned.attn_shift, &learned.mlp_scale, &learned.mlp_shift,
                            &learned.qk_scale}) {
        if (t->defined()) *t = t->detach();
      }
      result.let = learned;
      nlohmann::json j = {{"attn_scale", Range(learned.attn_scale)}, {"mlp_scale", Range(learned.mlp_scale)},
                          {"qk_scale", Range(learned.qk_scale)}};
      if (learned.attn_shift.defined()) j["attn_shift"] = Range(learned.attn_shift);
      if (learned.mlp_shift.defined()) j["mlp_shift"] = Range(learned.mlp_shift);
      (*details)["let"] = j;
    }
    const double loss = mean_loss(stored);
    return std::make_pair(std::move(result), loss);
  };
  // The block's loss at the initial parameters (SmoothQuant's scales, LWC's
  // near-full ranges), measured as the final one is.
  double initial_loss = 0;
  {
    nlohmann::json unused;
    QAAS_ASSIGN_OR_RETURN(auto start, store(&unused));
    initial_loss = start.second;
  }
  // The parameters training starts from, to fall back on (below).
  std::vector<at::Tensor> learnables = let_tensors, start_values;
  learnables.insert(learnables.end(), lwc_tensors.begin(), lwc_tensors.end());
  for (const at::Tensor& t : learnables) start_values.push_back(t.detach().clone());
  nlohmann::json losses = nlohmann::json::array();
  int64_t steps = 0;
  if (!let_tensors.empty() || !lwc_tensors.empty()) {
    c10::AutoGradMode grad(true);  // the pipeline runs without gradients
    for (int epoch = 1; epoch <= epochs; ++epoch) {
      double sum = 0;
      int64_t count = 0;
      for (int64_t i = 0; i < n; i += bw) {
        QAAS_ASSIGN_OR_RETURN(auto l, build());
        at::Tensor loss = block_loss(l, i, std::min(bw, n - i));
        const double value = loss.item<double>();
        if (!std::isfinite(value)) {
          return absl::InternalError(absl::StrCat("OmniQuant: the block loss became ", value, " in epoch ", epoch,
                                                  " (try a lower lwc_lr/let_lr)"));
        }
        loss.backward();
        let_opt.Step();
        lwc_opt.Step();
        sum += value;
        ++count;
        ++steps;
      }
      losses.push_back(sum / count);
      if (on_epoch && !on_epoch(epoch, sum / count)) {
        return absl::CancelledError(absl::StrCat("OmniQuant stopped after epoch ", epoch, " of ", epochs));
      }
    }
  }

  c10::NoGradGuard no_grad;
  nlohmann::json details = {{"epochs", epochs}, {"steps", steps}, {"loss", losses}, {"initial_loss", initial_loss}};
  QAAS_ASSIGN_OR_RETURN(auto kept, store(&details));
  // Training follows straight-through gradients of minibatch losses, which
  // promise no descent: where the trained block ends worse on the whole
  // calibration set than it began (activation rounding on a small layer can
  // do that), the starting parameters are what the job keeps, and the report
  // says so. A job is never worse off for having trained.
  details["trained_loss"] = kept.second;
  details["kept"] = "trained";
  if (!(kept.second <= initial_loss)) {
    for (size_t i = 0; i < learnables.size(); ++i) learnables[i].copy_(start_values[i]);
    details["kept"] = "initial";
    QAAS_ASSIGN_OR_RETURN(kept, store(&details));
  }
  OmniQuantResult result = std::move(kept.first);
  details["final_loss"] = kept.second;
  details["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.details = details;
  return result;
}

}  // namespace qaas::quant
