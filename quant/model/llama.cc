#include "quant/model/llama.h"

#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

const std::vector<std::string>& LlamaLinearNames() {
  static const std::vector<std::string> kNames = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  return kNames;
}

std::string LayerPrefix(int index) { return absl::StrCat("model.layers.", index, "."); }

namespace {

size_t LinearIndex(const std::string& name) {
  const auto& names = LlamaLinearNames();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return i;
  }
  throw std::out_of_range("no linear " + name);
}

// [out, in] of each linear, from the config.
std::vector<std::pair<int64_t, int64_t>> LinearShapes(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                kv = int64_t{c.num_kv_heads} * c.head_dim, m = c.intermediate_size;
  return {{q, h}, {kv, h}, {kv, h}, {h, q}, {m, h}, {m, h}, {h, m}};
}

}  // namespace

Linear& LlamaLayer::linear(const std::string& name) { return linears[LinearIndex(name)]; }
const Linear& LlamaLayer::linear(const std::string& name) const {
  return linears[LinearIndex(name)];
}

LlamaLayer LlamaLayer::To(const at::Device& device) const {
  LlamaLayer out;
  out.input_norm = input_norm.to(device);
  out.post_norm = post_norm.to(device);
  if (input_reorder.defined()) out.input_reorder = input_reorder.to(device);
  if (post_reorder.defined()) out.post_reorder = post_reorder.to(device);
  if (act) out.act = std::make_shared<const LayerActQuant>(act->To(device));
  for (const auto& l : linears) {
    out.linears.push_back({l.weight.to(device), l.bias.defined() ? l.bias.to(device) : l.bias});
  }
  return out;
}

absl::StatusOr<LlamaLayer> LoadLlamaLayer(const Checkpoint& ck, int index) {
  const ModelConfig& c = ck.config();
  const std::string prefix = LayerPrefix(index);
  LlamaLayer layer;
  QAAS_ASSIGN_OR_RETURN(layer.input_norm, ck.Load(prefix + "input_layernorm.weight", {c.hidden_size}));
  QAAS_ASSIGN_OR_RETURN(layer.post_norm, ck.Load(prefix + "post_attention_layernorm.weight", {c.hidden_size}));
  const auto shapes = LinearShapes(c);
  for (size_t i = 0; i < LlamaLinearNames().size(); ++i) {
    const std::string& name = LlamaLinearNames()[i];
    Linear lin;
    QAAS_ASSIGN_OR_RETURN(lin.weight, ck.Load(prefix + name + ".weight", {shapes[i].first, shapes[i].second}));
    const bool has_bias = name.rfind("self_attn.", 0) == 0 ? c.attention_bias : c.mlp_bias;
    if (has_bias && !(name == "self_attn.o_proj" && !ck.Has(prefix + name + ".bias"))) {
      QAAS_ASSIGN_OR_RETURN(lin.bias, ck.Load(prefix + name + ".bias", {shapes[i].first}));
    }
    layer.linears.push_back(std::move(lin));
  }
  return layer;
}

absl::StatusOr<LlamaHead> LoadLlamaHead(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  LlamaHead head;
  QAAS_ASSIGN_OR_RETURN(head.embed, ck.Load("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  QAAS_ASSIGN_OR_RETURN(head.final_norm, ck.Load("model.norm.weight", {c.hidden_size}));
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

Rope::Rope(const ModelConfig& c, int64_t max_len, const at::Device& device) {
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  // inv_freq_i = theta^(-2i/d); computed in float64, used in float32 as HF does.
  at::Tensor inv_freq =
      at::pow(c.rope_theta, -at::arange(0, c.head_dim, 2, f64) / static_cast<double>(c.head_dim))
          .to(at::kFloat);
  at::Tensor t = at::arange(max_len, at::TensorOptions().dtype(at::kFloat));
  at::Tensor freqs = at::outer(t, inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  cos = emb.cos().to(device);
  sin = emb.sin().to(device);
  causal_mask = at::full({max_len, max_len}, -std::numeric_limits<float>::infinity(),
                         at::TensorOptions().dtype(at::kFloat))
                    .triu(1)
                    .to(device);
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (x * at::rsqrt(var + eps));
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

}  // namespace

at::Tensor LlamaAttentionForward(const LlamaLayer& layer, const ModelConfig& c, const Rope& rope,
                                 const at::Tensor& hidden, const LinearInputHook& hook) {
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
  at::Tensor q = ApplyLinear(layer.linears[0], x).view({B, T, nh, hd}).transpose(1, 2);
  at::Tensor k = ApplyLinear(layer.linears[1], x).view({B, T, nkv, hd}).transpose(1, 2);
  at::Tensor v = ApplyLinear(layer.linears[2], x).view({B, T, nkv, hd}).transpose(1, 2);
  at::Tensor cos = rope.cos.narrow(0, 0, T), sin = rope.sin.narrow(0, 0, T);
  q = q * cos + RotateHalf(q) * sin;
  k = k * cos + RotateHalf(k) * sin;
  // The cache holds K after RoPE and V: both quantized per token and head.
  k = QuantizeKv(layer.act, k);
  v = QuantizeKv(layer.act, v);
  if (nkv != nh) {
    k = k.repeat_interleave(nh / nkv, 1);
    v = v.repeat_interleave(nh / nkv, 1);
  }
  // scores = q k^T / sqrt(d) + causal mask, computed in one fused baddbmm.
  at::Tensor mask = rope.causal_mask.narrow(0, 0, T).narrow(1, 0, T);
  at::Tensor scores = at::baddbmm(mask.expand({B * nh, T, T}), q.reshape({B * nh, T, hd}),
                                  k.reshape({B * nh, T, hd}).transpose(1, 2), /*beta=*/1.0,
                                  /*alpha=*/1.0 / std::sqrt(static_cast<double>(hd)));
  if (scores.requires_grad()) {
    scores = at::softmax(scores, -1);  // learning (OmniQuant): autograd cannot see in-place outputs
  } else {
    at::_softmax_out(scores, scores, -1, false);  // in place
  }
  at::Tensor attn = at::bmm(scores, v.reshape({B * nh, T, hd})).view({B, nh, T, hd});
  attn = QuantizeActivation(layer.act, ActPoint::kAttnOut, attn.transpose(1, 2).reshape({B, T, nh * hd}));
  observe("self_attn.o_proj", attn);
  return ApplyLinear(layer.linears[3], attn);
}

at::Tensor LlamaMlpForward(const LlamaLayer& layer, const ModelConfig& c, const at::Tensor& hidden,
                           const LinearInputHook& hook) {
  auto observe = [&](const char* name, const at::Tensor& x) {
    if (hook) hook(name, x.reshape({-1, x.size(-1)}));
  };
  at::Tensor x = QuantizeActivation(
      layer.act, ActPoint::kMlpIn, RmsNorm(Reorder(hidden, layer.post_reorder), layer.post_norm, c.rms_norm_eps));
  observe("mlp.gate_proj", x);
  observe("mlp.up_proj", x);
  at::Tensor mlp = QuantizeActivation(
      layer.act, ActPoint::kMlpHidden, at::silu(ApplyLinear(layer.linears[4], x)) * ApplyLinear(layer.linears[5], x));
  observe("mlp.down_proj", mlp);
  return ApplyLinear(layer.linears[6], mlp);
}

at::Tensor LlamaLayerForward(const LlamaLayer& layer, const ModelConfig& c, const Rope& rope,
                             const at::Tensor& hidden, const LinearInputHook& hook) {
  at::Tensor h = hidden + LlamaAttentionForward(layer, c, rope, hidden, hook);
  return h + LlamaMlpForward(layer, c, h, hook);
}

}  // namespace qaas::quant
