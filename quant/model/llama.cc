#include "quant/model/llama.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/model/small_head_attention.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

const std::vector<std::string>& LlamaLinearNames() {
  static const std::vector<std::string> kNames = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  return kNames;
}

std::string LayerPrefix(int index) { return absl::StrCat("model.layers.", index, "."); }

std::vector<std::string> LinearNamesOf(const ModelConfig& c) {
  if (c.moe.num_experts == 0) return LlamaLinearNames();
  std::vector<std::string> names(LlamaLinearNames().begin(), LlamaLinearNames().begin() + 4);
  for (int j = 0; j < c.moe.num_experts; ++j) {
    const std::string e = absl::StrCat(c.moe.block, ".experts.", j, ".");
    if (c.moe.mixtral_names) {
      names.insert(names.end(), {e + "w1", e + "w3", e + "w2"});
    } else {
      names.insert(names.end(), {e + "gate_proj", e + "up_proj", e + "down_proj"});
    }
  }
  if (c.moe.shared_expert_intermediate_size > 0) {
    names.insert(names.end(), {"mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"});
  }
  return names;
}

std::string RouterName(const ModelConfig& c) { return c.moe.block + ".gate.weight"; }
std::string SharedExpertGateName(const ModelConfig&) { return "mlp.shared_expert_gate.weight"; }

namespace {

size_t LinearIndex(const std::string& name) {
  const auto& names = LlamaLinearNames();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return i;
  }
  throw std::out_of_range("no linear " + name);
}

// [out, in] of each linear (LinearNamesOf order), from the config.
std::vector<std::pair<int64_t, int64_t>> LinearShapes(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                kv = int64_t{c.num_kv_heads} * c.head_dim, m = c.intermediate_size;
  if (c.moe.num_experts == 0) return {{q, h}, {kv, h}, {kv, h}, {h, q}, {m, h}, {m, h}, {h, m}};
  std::vector<std::pair<int64_t, int64_t>> shapes = {{q, h}, {kv, h}, {kv, h}, {h, q}};
  auto mlp = [&](int64_t inter) { shapes.insert(shapes.end(), {{inter, h}, {inter, h}, {h, inter}}); };
  for (int j = 0; j < c.moe.num_experts; ++j) mlp(c.moe.expert_intermediate_size);
  if (c.moe.shared_expert_intermediate_size > 0) mlp(c.moe.shared_expert_intermediate_size);
  return shapes;
}

}  // namespace

Linear& LlamaLayer::linear(const std::string& name) { return linears[LinearIndex(name)]; }
const Linear& LlamaLayer::linear(const std::string& name) const {
  return linears[LinearIndex(name)];
}

LlamaLayer LlamaLayer::To(const at::Device& device) const {
  LlamaLayer out;
  out.index = index;
  auto to = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  out.input_norm = to(input_norm);
  out.post_norm = to(post_norm);
  out.attn_out_norm = to(attn_out_norm);
  out.mlp_out_norm = to(mlp_out_norm);
  out.q_norm = to(q_norm);
  out.k_norm = to(k_norm);
  out.router = to(router);
  out.shared_expert_gate = to(shared_expert_gate);
  out.input_reorder = to(input_reorder);
  out.post_reorder = to(post_reorder);
  if (act) out.act = std::make_shared<const LayerActQuant>(act->To(device));
  for (const auto& l : linears) out.linears.push_back({to(l.weight), to(l.bias)});
  return out;
}

LlamaNormNames NormNamesOf(const ModelConfig& c) {
  if (c.sandwich_norms) {
    return {"input_layernorm.weight", "pre_feedforward_layernorm.weight", "post_attention_layernorm.weight",
            "post_feedforward_layernorm.weight"};
  }
  return {"input_layernorm.weight", "post_attention_layernorm.weight", "", ""};
}

namespace {

// A norm's weight as the forward multiplies by it: Gemma stores w for 1 + w.
absl::StatusOr<at::Tensor> LoadNorm(const Checkpoint& ck, const std::string& name, int64_t size) {
  QAAS_ASSIGN_OR_RETURN(at::Tensor w, ck.Load(name, {size}));
  const double offset = ck.config().norm_weight_offset;
  return offset != 0 ? w + offset : w;
}

}  // namespace

absl::StatusOr<LlamaLayer> LoadLlamaLayer(const Checkpoint& ck, int index) {
  const ModelConfig& c = ck.config();
  const std::string prefix = LayerPrefix(index);
  const LlamaNormNames norms = NormNamesOf(c);
  LlamaLayer layer;
  layer.index = index;
  QAAS_ASSIGN_OR_RETURN(layer.input_norm, LoadNorm(ck, prefix + norms.attn_in, c.hidden_size));
  QAAS_ASSIGN_OR_RETURN(layer.post_norm, LoadNorm(ck, prefix + norms.mlp_in, c.hidden_size));
  if (c.sandwich_norms) {
    QAAS_ASSIGN_OR_RETURN(layer.attn_out_norm, LoadNorm(ck, prefix + norms.attn_out, c.hidden_size));
    QAAS_ASSIGN_OR_RETURN(layer.mlp_out_norm, LoadNorm(ck, prefix + norms.mlp_out, c.hidden_size));
  }
  if (c.qk_norm) {
    QAAS_ASSIGN_OR_RETURN(layer.q_norm, LoadNorm(ck, prefix + "self_attn.q_norm.weight", c.head_dim));
    QAAS_ASSIGN_OR_RETURN(layer.k_norm, LoadNorm(ck, prefix + "self_attn.k_norm.weight", c.head_dim));
  }
  const auto shapes = LinearShapes(c);
  const std::vector<std::string> names = LinearNamesOf(c);
  layer.linears.resize(names.size());
  if (c.moe.num_experts > 0) {
    QAAS_ASSIGN_OR_RETURN(layer.router, ck.Load(prefix + RouterName(c), {c.moe.num_experts, c.hidden_size}));
    if (c.moe.shared_expert_intermediate_size > 0) {
      QAAS_ASSIGN_OR_RETURN(layer.shared_expert_gate, ck.Load(prefix + SharedExpertGateName(c), {1, c.hidden_size}));
    }
  }
  // Phi-3's fused projections, split by rows into their parts (q, k, v;
  // gate, up) in LinearNames() order.
  auto load_fused = [&](const std::string& name, size_t first, size_t count) -> absl::Status {
    int64_t rows = 0;
    std::vector<int64_t> sizes;
    for (size_t i = first; i < first + count; ++i) {
      sizes.push_back(shapes[i].first);
      rows += shapes[i].first;
    }
    QAAS_ASSIGN_OR_RETURN(at::Tensor w, ck.Load(prefix + name + ".weight", {rows, shapes[first].second}));
    auto parts = w.split_with_sizes(sizes, 0);
    for (size_t i = 0; i < count; ++i) layer.linears[first + i].weight = parts[i].contiguous();
    return absl::OkStatus();
  };
  if (c.fused_qkv) QAAS_RETURN_IF_ERROR(load_fused("self_attn.qkv_proj", 0, 3));
  if (c.fused_gate_up) QAAS_RETURN_IF_ERROR(load_fused("mlp.gate_up_proj", 4, 2));
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    Linear& lin = layer.linears[i];
    if (lin.weight.defined()) continue;  // a part of a fused projection
    QAAS_ASSIGN_OR_RETURN(lin.weight, ck.Load(prefix + name + ".weight", {shapes[i].first, shapes[i].second}));
    const bool has_bias = name == "self_attn.o_proj"             ? c.attention_out_bias
                          : name.rfind("self_attn.", 0) == 0 ? c.attention_bias
                                                             : c.mlp_bias;
    if (has_bias) {
      QAAS_ASSIGN_OR_RETURN(lin.bias, ck.Load(prefix + name + ".bias", {shapes[i].first}));
    }
  }
  return layer;
}

absl::StatusOr<LlamaHead> LoadLlamaHead(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  LlamaHead head;
  QAAS_ASSIGN_OR_RETURN(head.embed, ck.Load("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  QAAS_ASSIGN_OR_RETURN(head.final_norm, LoadNorm(ck, "model.norm.weight", c.hidden_size));
  if (ck.Has("lm_head.weight")) {
    QAAS_ASSIGN_OR_RETURN(head.lm_head, ck.Load("lm_head.weight", {c.vocab_size, c.hidden_size}));
  } else if (c.tie_word_embeddings) {
    head.lm_head = head.embed;
  } else {
    return absl::InvalidArgumentError(
        "model has no lm_head.weight and config.json does not tie word embeddings");
  }
  return head;
}

std::pair<at::Tensor, double> Rope::InverseFrequencies(const ModelConfig& c, int64_t seq_len) {
  // Each type as Transformers' modeling_rope_utils.py computes it: float32
  // tensors, Python (double) scalars.
  const RopeScaling& s = c.rope_scaling;
  const int64_t dim = c.rotary_dim > 0 ? c.rotary_dim : c.head_dim;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor exponents = at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / dim;
  auto inverse = [&](double base) { return 1.0 / at::pow(base, exponents); };
  double attention_factor = 1.0;
  if (s.type == "default") return {inverse(c.rope_theta), 1.0};
  if (s.type == "linear") return {inverse(c.rope_theta) / s.factor, 1.0};
  if (s.type == "dynamic") {
    // NTK-aware base, grown once the sequence outruns the original context.
    // Transformers measures against max_position_embeddings here.
    const double original = c.max_position_embeddings;
    const double len = seq_len > original ? static_cast<double>(seq_len) : original;
    const double base =
        c.rope_theta * std::pow(s.factor * len / original - (s.factor - 1), static_cast<double>(dim) / (dim - 2));
    return {inverse(base), 1.0};
  }
  if (s.type == "llama3") {
    const at::Tensor inv = inverse(c.rope_theta);
    const double old_context = s.original_max_position_embeddings;
    const double low_wavelen = old_context / s.low_freq_factor, high_wavelen = old_context / s.high_freq_factor;
    const at::Tensor wavelen = 2 * M_PI / inv;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv / s.factor, inv);
    const at::Tensor smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    const at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    const at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    return {at::where(medium, smoothed, scaled), 1.0};
  }
  if (s.type == "yarn") {
    auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    const double factor = s.factor > 0 ? s.factor
                                       : static_cast<double>(c.max_position_embeddings) /
                                             s.original_max_position_embeddings;
    attention_factor = s.attention_factor;
    if (attention_factor < 0) {
      attention_factor = s.mscale > 0 && s.mscale_all_dim > 0
                             ? get_mscale(factor, s.mscale) / get_mscale(factor, s.mscale_all_dim)
                             : get_mscale(factor, 1.0);
    }
    const double original = s.original_max_position_embeddings;
    auto correction_dim = [&](double rotations) {
      return dim * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(c.rope_theta));
    };
    double low = correction_dim(s.beta_fast), high = correction_dim(s.beta_slow);
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    const at::Tensor pos_freqs = at::pow(c.rope_theta, exponents);
    const at::Tensor extrapolation = 1.0 / pos_freqs, interpolation = 1.0 / (factor * pos_freqs);
    const at::Tensor ramp = at::clamp((at::arange(dim / 2, f32) - low) / (high - low), 0, 1);
    const at::Tensor extrapolation_factor = 1 - ramp;
    return {interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor, attention_factor};
  }
  if (s.type == "longrope") {
    const double original = s.original_max_position_embeddings;
    const double factor = s.factor > 0 ? s.factor : static_cast<double>(c.max_position_embeddings) / original;
    attention_factor = s.attention_factor;
    if (attention_factor < 0) {
      attention_factor = factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(original));
    }
    const std::vector<double>& ext = seq_len > original ? s.long_factor : s.short_factor;
    const at::Tensor ext_factors = at::tensor(ext, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
    return {1.0 / (ext_factors * at::pow(c.rope_theta, exponents)), attention_factor};
  }
  return {inverse(c.rope_theta), 1.0};  // ParseModelConfig admits no other type
}

namespace {

// cos and sin [T, head_dim] of positions 0..T-1 for `inv_freq`, as
// Transformers' rotary forward: float32 products, scaled by the attention
// factor.
std::pair<at::Tensor, at::Tensor> RotaryTables(const at::Tensor& inv_freq, double attention_factor, int64_t T,
                                               const at::Device& device) {
  at::Tensor t = at::arange(T, at::TensorOptions().dtype(at::kFloat));
  at::Tensor freqs = at::outer(t, inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (attention_factor != 1.0) {
    cos = cos * attention_factor;
    sin = sin * attention_factor;
  }
  return {cos.to(device), sin.to(device)};
}

}  // namespace

namespace {

// The additive causal mask [T, T]; with window > 0 keys `window` or more
// positions behind the query are hidden too.
at::Tensor AttentionMask(int64_t T, int window, const at::Device& device) {
  const float inf = std::numeric_limits<float>::infinity();
  at::Tensor mask = at::full({T, T}, -inf, at::TensorOptions().dtype(at::kFloat)).triu(1);
  if (window > 0) mask = mask + at::full({T, T}, -inf, at::TensorOptions().dtype(at::kFloat)).tril(-window);
  return mask.to(device);
}

}  // namespace

Rope::Variant Rope::MakeVariant(const ModelConfig& c, int64_t max_len) const {
  Variant v;
  v.config = c;
  v.config.raw_json.clear();
  const RopeScaling& s = c.rope_scaling;
  v.serve = s.type == "dynamic"    ? std::min<int64_t>(max_len, c.max_position_embeddings)
            : s.type == "longrope" ? std::min<int64_t>(max_len, s.original_max_position_embeddings)
                                   : max_len;
  // The table every forward within the original context uses.
  auto [inv_freq, factor] = InverseFrequencies(c, 0);
  std::tie(v.cos, v.sin) = RotaryTables(inv_freq, factor, max_len, device_);
  return v;
}

Rope::Rope(const ModelConfig& c, int64_t max_len, const at::Device& device) : device_(device) {
  global_ = MakeVariant(c, max_len);
  cos = global_.cos;
  sin = global_.sin;
  if (c.local_rope) {
    ModelConfig local = c;
    local.rope_theta = c.local_rope_theta;
    local.rope_scaling = c.local_rope_scaling;
    local_ = std::make_shared<const Variant>(MakeVariant(local, max_len));
  }
  causal_mask = AttentionMask(max_len, 0, device);
  for (int window : c.layer_window) {
    if (window > 0 && !window_masks_.count(window)) window_masks_[window] = AttentionMask(max_len, window, device);
  }
}

std::pair<at::Tensor, at::Tensor> Rope::TablesOf(const Variant& v, int64_t T) const {
  if (T <= v.serve) return {v.cos.narrow(0, 0, T), v.sin.narrow(0, 0, T)};
  auto [inv_freq, factor] = InverseFrequencies(v.config, T);
  return RotaryTables(inv_freq, factor, T, device_);
}

std::pair<at::Tensor, at::Tensor> Rope::Tables(int64_t T, bool local) const {
  return TablesOf(local && local_ ? *local_ : global_, T);
}

at::Tensor Rope::Mask(int64_t T, int window) const {
  if (T <= causal_mask.size(0)) {
    if (window <= 0) return causal_mask.narrow(0, 0, T).narrow(1, 0, T);
    auto it = window_masks_.find(window);
    if (it != window_masks_.end()) return it->second.narrow(0, 0, T).narrow(1, 0, T);
  }
  return AttentionMask(T, window, device_);  // longer than max_len, or not one of the config's windows
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (x * at::rsqrt(var + eps));
}

at::Tensor Activation(const std::string& name, const at::Tensor& x) {
  return name == "gelu_pytorch_tanh" ? at::gelu(x, "tanh") : at::silu(x);  // ParseModelConfig admits no other
}

at::Tensor QuantizeActivation(const std::shared_ptr<const LayerActQuant>& act, ActPoint p, const at::Tensor& x) {
  return act ? act->at(p)(x) : x;
}

at::Tensor QuantizeKv(const std::shared_ptr<const LayerActQuant>& act, const at::Tensor& x) {
  return act ? act->kv(x) : x;
}

at::Tensor Reorder(const at::Tensor& x, const at::Tensor& reorder) {
  return reorder.defined() ? x.index_select(-1, reorder) : x;
}

namespace {

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor ApplyLinear(const Linear& l, const at::Tensor& x) {
  return l.bias.defined() ? at::linear(x, l.weight, l.bias) : at::linear(x, l.weight);
}

// RoPE on the first rotary_dim channels of x [..., head_dim]; the rest pass.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t r = cos.size(-1), hd = x.size(-1);
  if (r == hd) return x * cos + RotateHalf(x) * sin;
  const at::Tensor rot = x.narrow(-1, 0, r);
  return at::cat({rot * cos + RotateHalf(rot) * sin, x.narrow(-1, r, hd - r)}, -1);
}

}  // namespace

at::Tensor TokenLayout::Mask(int window) const {
  const int64_t T = positions.size(1);
  const at::Tensor causal = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(positions.device())).tril();
  const at::Tensor bi = branches.unsqueeze(2), bj = branches.unsqueeze(1);
  at::Tensor keep = causal.unsqueeze(0) & (bj.eq(0) | bj.eq(bi));
  if (window > 0) {
    // Query i sees key j only when j is fewer than `window` positions back.
    keep = keep & ((positions.unsqueeze(2) - positions.unsqueeze(1)) < window);
  }
  const at::Tensor zero = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(positions.device()));
  const at::Tensor inf = at::full({}, -std::numeric_limits<float>::infinity(), zero.options());
  return at::where(keep, zero, inf).unsqueeze(1);
}

// Causal attention of q, k, v [BH, T, hd] under the additive mask [T, T], a
// block of heads and queries at a time: a block's scores stop at its last
// query and start at its first query's window (the keys outside are masked
// anyway), so the T x T square is never materialized: about half its
// products, and a working set of ~kChunkBytes that stays in cache instead of
// T^2 floats per head streamed through memory four times (the product, the
// mask, softmax, the product with V). Blocks of kRows queries and as many
// heads as fit: each head's products are then kRows rows long, where slicing
// every head's queries thin (21 rows at 96 heads x 512 tokens) ran them at a
// tenth of the GEMM rate (bench/attention_bench). Equal to the square's
// result up to float rounding: the keys left out have weight exactly 0.
at::Tensor ChunkedCausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& mask, int window, double scale) {
  constexpr int64_t kChunkBytes = int64_t{1} << 20, kRows = 128;
  const int64_t BH = q.size(0), T = q.size(1);
  const int64_t rows = std::min(kRows, T);
  const int64_t heads = std::clamp<int64_t>(kChunkBytes / (rows * T * 4), 1, BH);
  at::Tensor out = at::empty_like(q);
  for (int64_t h0 = 0; h0 < BH; h0 += heads) {
    const int64_t nh = std::min(heads, BH - h0);
    const at::Tensor qh = q.narrow(0, h0, nh), kh = k.narrow(0, h0, nh), vh = v.narrow(0, h0, nh);
    for (int64_t q0 = 0; q0 < T; q0 += rows) {
      const int64_t n = std::min(rows, T - q0), q1 = q0 + n;
      const int64_t k0 = window > 0 ? std::max<int64_t>(0, q0 - window + 1) : 0, nk = q1 - k0;
      at::Tensor scores = at::baddbmm(mask.narrow(0, q0, n).narrow(1, k0, nk).expand({nh, n, nk}),
                                      qh.narrow(1, q0, n), kh.narrow(1, k0, nk).transpose(1, 2), /*beta=*/1.0,
                                      /*alpha=*/scale);
      at::_softmax_out(scores, scores, -1, false);
      out.narrow(0, h0, nh).narrow(1, q0, n).copy_(at::bmm(scores, vh.narrow(1, k0, nk)));
    }
  }
  return out;
}

at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                           int window, double scale) {
  at::Tensor out = SmallHeadCausalAttention(q, k, v, window, scale);
  return out.defined() ? out : ChunkedCausalAttention(q, k, v, mask, window, scale);
}

at::Tensor LlamaAttentionForward(const LlamaLayer& layer, const ModelConfig& c, const Rope& rope,
                                 const at::Tensor& hidden, const LinearInputHook& hook, const TokenLayout* layout) {
  const int64_t B = hidden.size(0), T = hidden.size(1);
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  auto observe = [&](const char* name, const at::Tensor& x) {
    if (hook) hook(name, x.reshape({-1, x.size(-1)}));
  };
  at::Tensor x = QuantizeActivation(
      layer.act, ActPoint::kAttnIn, RmsNorm(Reorder(hidden, layer.input_reorder), layer.input_norm, c.rms_norm_eps));
  observe("self_attn.q_proj", x);
  observe("self_attn.k_proj", x);
  observe("self_attn.v_proj", x);
  at::Tensor q = ApplyLinear(layer.linears[0], x).view({B, T, nh, hd});
  at::Tensor k = ApplyLinear(layer.linears[1], x).view({B, T, nkv, hd});
  at::Tensor v = ApplyLinear(layer.linears[2], x).view({B, T, nkv, hd}).transpose(1, 2);
  if (layer.q_norm.defined()) q = RmsNorm(q, layer.q_norm, c.rms_norm_eps);  // per head, before RoPE
  if (layer.k_norm.defined()) k = RmsNorm(k, layer.k_norm, c.rms_norm_eps);
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  const int window = c.WindowOf(layer.index);
  auto [cos, sin] = rope.Tables(layout ? layout->max_position : T, /*local=*/window > 0);
  if (layout) {  // each token's own position: [B, 1, T, rotary_dim]
    const at::Tensor at_positions = layout->positions.reshape({-1});
    cos = cos.index_select(0, at_positions).view({B, 1, T, cos.size(-1)});
    sin = sin.index_select(0, at_positions).view({B, 1, T, sin.size(-1)});
  }
  q = ApplyRope(q, cos, sin);
  k = ApplyRope(k, cos, sin);
  // The cache holds K after RoPE and V: both quantized per token and head.
  k = QuantizeKv(layer.act, k);
  v = QuantizeKv(layer.act, v);
  if (nkv != nh) {
    k = k.repeat_interleave(nh / nkv, 1);
    v = v.repeat_interleave(nh / nkv, 1);
  }
  at::Tensor attn;  // [B * nh, T, hd]
  if (!layout && c.attn_logit_softcap <= 0 && !q.requires_grad() && !k.requires_grad() && !v.requires_grad()) {
    // Plain causal attention, nothing to learn: small heads by the kernel
    // made for them, others in chunks of queries.
    attn = CausalAttention(q.reshape({B * nh, T, hd}), k.reshape({B * nh, T, hd}), v.reshape({B * nh, T, hd}),
                           rope.Mask(T, window), window, c.attention_scale);
  } else {
    at::Tensor scores;
    if (layout) {
      // A packed batch: its mask [B, 1, T, T] broadcast over the heads.
      scores = at::matmul(q, k.transpose(2, 3)) * c.attention_scale;
      if (c.attn_logit_softcap > 0) scores = at::tanh(scores / c.attn_logit_softcap) * c.attn_logit_softcap;
      const at::Tensor mask = layout->Mask(window).to(scores.scalar_type());
      scores = (scores.requires_grad() ? scores + mask : scores.add_(mask)).view({B * nh, T, T});
    } else if (c.attn_logit_softcap > 0) {
      const at::Tensor mask = rope.Mask(T, window);
      // Gemma 2: cap * tanh(s / cap) on the scaled scores, then the mask.
      const double cap = c.attn_logit_softcap;
      scores = at::bmm(q.reshape({B * nh, T, hd}), k.reshape({B * nh, T, hd}).transpose(1, 2)) * c.attention_scale;
      scores = at::tanh(scores / cap) * cap + mask;
    } else {
      // Learning (OmniQuant): scores = q k^T * scale + causal mask in one
      // fused baddbmm, kept whole for autograd.
      const at::Tensor mask = rope.Mask(T, window);
      scores = at::baddbmm(mask.expand({B * nh, T, T}), q.reshape({B * nh, T, hd}),
                           k.reshape({B * nh, T, hd}).transpose(1, 2), /*beta=*/1.0, /*alpha=*/c.attention_scale);
    }
    if (scores.requires_grad()) {
      scores = at::softmax(scores, -1);  // learning (OmniQuant): autograd cannot see in-place outputs
    } else {
      at::_softmax_out(scores, scores, -1, false);  // in place
    }
    attn = at::bmm(scores, v.reshape({B * nh, T, hd}));
  }
  // Free what attn was made of before o_proj's input is observed: a staged
  // forward (staged_forward.h) pauses there, holding what is alive.
  x.reset();
  q.reset();
  k.reset();
  v.reset();
  attn = QuantizeActivation(layer.act, ActPoint::kAttnOut,
                            attn.view({B, nh, T, hd}).transpose(1, 2).reshape({B, T, nh * hd}));
  observe("self_attn.o_proj", attn);
  at::Tensor out = ApplyLinear(layer.linears[3], attn);
  // Gemma: the block's output is normalized before the residual.
  return layer.attn_out_norm.defined() ? RmsNorm(out, layer.attn_out_norm, c.rms_norm_eps) : out;
}

std::pair<at::Tensor, at::Tensor> RouteTokens(const LlamaLayer& layer, const ModelConfig& c,
                                              const at::Tensor& hidden) {
  // As Transformers' routers: softmax over the experts in float32, the top
  // k (ties to the lower index, as torch.topk), renormalized if asked.
  const at::Tensor logits = at::linear(hidden.reshape({-1, c.hidden_size}), layer.router);
  auto [weights, experts] = at::topk(at::softmax(logits.to(at::kFloat), -1), c.moe.top_k, -1);
  if (c.moe.norm_topk_prob) weights = weights / weights.sum(-1, /*keepdim=*/true);
  return {experts, weights};
}

namespace {

// A mixture-of-experts MLP over the normed input x [..., hidden]: each
// expert sees only the tokens routed to it (what the hook observes, so
// calibration statistics are the routed tokens'), its output weighted by
// the router and summed; plus Qwen2-MoE's gated shared expert.
// The router and the shared-expert gate are float linears: they read the
// norm's output `normed` as it is; the experts read x, `normed` through the
// MLP input's activation quantizer (the same tensor when there is none).
at::Tensor MoeForward(const LlamaLayer& layer, const ModelConfig& c, const at::Tensor& normed, const at::Tensor& x,
                      const std::vector<std::string>& names, const LinearInputHook& hook) {
  const at::Tensor flat = x.reshape({-1, c.hidden_size});
  const at::Tensor flat_normed = normed.reshape({-1, c.hidden_size});
  auto [experts, weights] = RouteTokens(layer, c, flat_normed);
  at::Tensor out = at::zeros_like(flat);
  auto expert_mlp = [&](size_t first, const at::Tensor& in) {
    if (hook) {
      hook(names[first], in);
      hook(names[first + 1], in);
    }
    at::Tensor h = QuantizeActivation(layer.act, ActPoint::kMlpHidden,
                                      Activation(c.activation, ApplyLinear(layer.linears[first], in)) *
                                          ApplyLinear(layer.linears[first + 1], in));
    if (hook) hook(names[first + 2], h);
    return ApplyLinear(layer.linears[first + 2], h);
  };
  const bool all_tokens = hook && layer.experts_observe_all_tokens;
  for (int j = 0; j < c.moe.num_experts; ++j) {
    const at::Tensor chosen = experts == j;  // [tokens, top_k]
    const at::Tensor tokens = chosen.any(-1).nonzero().squeeze(-1);
    const size_t first = 4 + 3 * static_cast<size_t>(j);
    if (hook && layer.observe_only_expert >= 0 && j != layer.observe_only_expert) continue;
    if (tokens.numel() == 0 && !all_tokens) continue;  // no token for this expert
    // all_tokens: statistics from every token; the output keeps the routed
    // rows (the expert is row-wise, so they are what routing alone computes).
    const at::Tensor y = all_tokens ? expert_mlp(first, flat).index_select(0, tokens)
                                    : expert_mlp(first, flat.index_select(0, tokens));
    if (tokens.numel() == 0) continue;
    const at::Tensor w = (weights * chosen).sum(-1).index_select(0, tokens);
    out = out.index_add(0, tokens, y * w.unsqueeze(-1).to(y.scalar_type()));
  }
  if (layer.shared_expert_gate.defined() && !(hook && layer.observe_only_expert >= 0)) {
    const at::Tensor shared = expert_mlp(4 + 3 * static_cast<size_t>(c.moe.num_experts), flat);
    out = out + at::sigmoid(at::linear(flat_normed, layer.shared_expert_gate)) * shared;
  }
  return out.view(x.sizes());
}

}  // namespace

at::Tensor LlamaMlpForward(const LlamaLayer& layer, const ModelConfig& c, const at::Tensor& hidden,
                           const LinearInputHook& hook) {
  auto observe = [&](const char* name, const at::Tensor& x) {
    if (hook) hook(name, x.reshape({-1, x.size(-1)}));
  };
  at::Tensor normed = RmsNorm(Reorder(hidden, layer.post_reorder), layer.post_norm, c.rms_norm_eps);
  at::Tensor x = QuantizeActivation(layer.act, ActPoint::kMlpIn, normed);
  if (c.moe.num_experts > 0) {
    at::Tensor out = MoeForward(layer, c, normed, x, hook ? LinearNamesOf(c) : std::vector<std::string>(), hook);
    return layer.mlp_out_norm.defined() ? RmsNorm(out, layer.mlp_out_norm, c.rms_norm_eps) : out;
  }
  observe("mlp.gate_proj", x);
  observe("mlp.up_proj", x);
  at::Tensor mlp =
      QuantizeActivation(layer.act, ActPoint::kMlpHidden,
                         Activation(c.activation, ApplyLinear(layer.linears[4], x)) * ApplyLinear(layer.linears[5], x));
  normed.reset();  // as in the attention: nothing more than down_proj's input is held at its observer
  x.reset();
  observe("mlp.down_proj", mlp);
  at::Tensor out = ApplyLinear(layer.linears[6], mlp);
  return layer.mlp_out_norm.defined() ? RmsNorm(out, layer.mlp_out_norm, c.rms_norm_eps) : out;
}

at::Tensor LlamaLayerForward(const LlamaLayer& layer, const ModelConfig& c, const Rope& rope,
                             const at::Tensor& hidden, const LinearInputHook& hook, const TokenLayout* layout) {
  at::Tensor h = hidden + LlamaAttentionForward(layer, c, rope, hidden, hook, layout);
  return h + LlamaMlpForward(layer, c, h, hook);
}

}  // namespace qaas::quant
