#include "quant/model/opt.h"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

const std::vector<std::string>& OptLinearNames() {
  static const std::vector<std::string> kNames = {"self_attn.q_proj",
                                                  "self_attn.k_proj",
                                                  "self_attn.v_proj",
                                                  "self_attn.out_proj",
                                                  "fc1",
                                                  "fc2"};
  return kNames;
}

std::string OptDecoderPrefix(const Checkpoint& ck) {
  return !ck.Has("model.decoder.embed_tokens.weight") && ck.Has("decoder.embed_tokens.weight")
             ? "decoder."
             : "model.decoder.";
}

std::string OptLayerPrefix(const Checkpoint& ck, int index) {
  return absl::StrCat(OptDecoderPrefix(ck), "layers.", index, ".");
}

namespace {

size_t LinearIndex(const std::string& name) {
  const auto& names = OptLinearNames();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return i;
  }
  throw std::out_of_range("no OPT linear " + name);
}

absl::Status CheckIsOpt(const ModelConfig& c) {
  if (c.architecture != "opt") {
    return absl::FailedPreconditionError(
        absl::StrCat("model_type '", c.model_type, "' is not an OPT model"));
  }
  return absl::OkStatus();
}

// Loads <prefix>weight and <prefix>bias, both [hidden], when the config has
// affine LayerNorms.
absl::StatusOr<LayerNormWeights> LoadLayerNorm(const Checkpoint& ck, const std::string& prefix) {
  const ModelConfig& c = ck.config();
  LayerNormWeights norm;
  if (!c.layer_norm_elementwise_affine) return norm;
  QAAS_ASSIGN_OR_RETURN(norm.weight, ck.Load(prefix + "weight", {c.hidden_size}));
  QAAS_ASSIGN_OR_RETURN(norm.bias, ck.Load(prefix + "bias", {c.hidden_size}));
  return norm;
}

at::Tensor ApplyLinear(const Linear& l, const at::Tensor& x) {
  return l.bias.defined() ? at::linear(x, l.weight, l.bias) : at::linear(x, l.weight);
}

LayerNormWeights NormTo(const LayerNormWeights& n, const at::Device& device) {
  return {n.weight.defined() ? n.weight.to(device) : n.weight,
          n.bias.defined() ? n.bias.to(device) : n.bias};
}

}  // namespace

Linear& OptLayer::linear(const std::string& name) { return linears[LinearIndex(name)]; }
const Linear& OptLayer::linear(const std::string& name) const { return linears[LinearIndex(name)]; }

OptLayer OptLayer::To(const at::Device& device) const {
  OptLayer out;
  out.self_attn_layer_norm = NormTo(self_attn_layer_norm, device);
  out.final_layer_norm = NormTo(final_layer_norm, device);
  if (self_attn_reorder.defined()) out.self_attn_reorder = self_attn_reorder.to(device);
  if (final_reorder.defined()) out.final_reorder = final_reorder.to(device);
  if (act) out.act = std::make_shared<const LayerActQuant>(act->To(device));
  for (const auto& l : linears) {
    out.linears.push_back({l.weight.to(device), l.bias.defined() ? l.bias.to(device) : l.bias});
  }
  return out;
}

absl::StatusOr<OptLayer> LoadOptLayer(const Checkpoint& ck, int index) {
  const ModelConfig& c = ck.config();
  QAAS_RETURN_IF_ERROR(CheckIsOpt(c));
  if (index < 0 || index >= c.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", index, " is out of range: the model has ", c.num_layers));
  }
  const std::string prefix = OptLayerPrefix(ck, index);
  OptLayer layer;
  QAAS_ASSIGN_OR_RETURN(layer.self_attn_layer_norm, LoadLayerNorm(ck, prefix + "self_attn_layer_norm."));
  QAAS_ASSIGN_OR_RETURN(layer.final_layer_norm, LoadLayerNorm(ck, prefix + "final_layer_norm."));

  const int64_t h = c.hidden_size, m = c.intermediate_size;
  // [out, in] in OptLinearNames() order.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{h, h}, {h, h}, {h, h},
                                                           {h, h}, {m, h}, {h, m}};
  for (size_t i = 0; i < OptLinearNames().size(); ++i) {
    const std::string name = prefix + OptLinearNames()[i];
    Linear lin;
    QAAS_ASSIGN_OR_RETURN(lin.weight, ck.Load(name + ".weight", {shapes[i].first, shapes[i].second}));
    if (c.attention_bias) {  // enable_bias covers every linear of the layer
      QAAS_ASSIGN_OR_RETURN(lin.bias, ck.Load(name + ".bias", {shapes[i].first}));
    }
    layer.linears.push_back(std::move(lin));
  }
  return layer;
}

absl::StatusOr<OptHead> LoadOptHead(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  QAAS_RETURN_IF_ERROR(CheckIsOpt(c));
  const std::string d = OptDecoderPrefix(ck);
  OptHead head;
  QAAS_ASSIGN_OR_RETURN(head.embed_tokens, ck.Load(d + "embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  QAAS_ASSIGN_OR_RETURN(head.embed_positions, ck.Load(d + "embed_positions.weight",
                                                      {c.max_position_embeddings + kOptPositionOffset, c.hidden_size}));
  QAAS_ASSIGN_OR_RETURN(head.final_norm, LoadLayerNorm(ck, d + "final_layer_norm."));
  if (ck.Has("lm_head.weight")) {
    QAAS_ASSIGN_OR_RETURN(head.lm_head, ck.Load("lm_head.weight", {c.vocab_size, c.hidden_size}));
  } else if (c.tie_word_embeddings) {
    head.lm_head = head.embed_tokens;
  } else {
    return absl::InvalidArgumentError(
        "model has no lm_head.weight and config.json does not tie word embeddings");
  }
  return head;
}

at::Tensor OptEmbed(const OptHead& head, const at::Tensor& ids, const at::Tensor& positions_of) {
  if (positions_of.defined()) {
    const at::Tensor rows = (positions_of.reshape({-1}) + kOptPositionOffset).to(head.embed_positions.device());
    return at::embedding(head.embed_tokens, ids) +
           head.embed_positions.index_select(0, rows).view({ids.size(0), ids.size(1), -1});
  }
  const int64_t T = ids.size(-1);
  // HF: positions = cumsum(mask) * mask - 1, i.e. 0..T-1 for an all-ones mask.
  at::Tensor positions = head.embed_positions.narrow(0, kOptPositionOffset, T);
  return at::embedding(head.embed_tokens, ids) + positions;
}

at::Tensor OptLayerNorm(const at::Tensor& x, const LayerNormWeights& norm) {
  return at::layer_norm(x, {x.size(-1)}, norm.weight, norm.bias, kOptLayerNormEps);
}

at::Tensor OptAttentionForward(const OptLayer& layer, const ModelConfig& c,
                               const at::Tensor& hidden, const LinearInputHook& hook, const TokenLayout* layout) {
  const int64_t B = hidden.size(0), T = hidden.size(1);
  const int64_t nh = c.num_heads, hd = c.head_dim;
  auto observe = [&](const char* name, const at::Tensor& x) {
    if (hook) hook(name, x.reshape({-1, x.size(-1)}));
  };
  at::Tensor x = QuantizeActivation(layer.act, ActPoint::kAttnIn,
                                    OptLayerNorm(Reorder(hidden, layer.self_attn_reorder), layer.self_attn_layer_norm));
  observe("self_attn.q_proj", x);
  observe("self_attn.k_proj", x);
  observe("self_attn.v_proj", x);
  // As OPTAttention: q is scaled after its projection (bias included), then
  // the scores need no further scaling.
  at::Tensor q = ApplyLinear(layer.linears[0], x) * (1.0 / std::sqrt(static_cast<double>(hd)));
  at::Tensor k = ApplyLinear(layer.linears[1], x);
  at::Tensor v = ApplyLinear(layer.linears[2], x);
  q = q.view({B, T, nh, hd}).transpose(1, 2).reshape({B * nh, T, hd});
  // The cache holds K and V: both quantized per token and head.
  k = QuantizeKv(layer.act, k.view({B, T, nh, hd}).transpose(1, 2).reshape({B * nh, T, hd}));
  v = QuantizeKv(layer.act, v.view({B, T, nh, hd}).transpose(1, 2).reshape({B * nh, T, hd}));
  at::Tensor scores;
  if (layout) {  // a packed batch: its mask [B, 1, T, T] broadcast over the heads
    scores = (at::bmm(q, k.transpose(1, 2)).view({B, nh, T, T}) + layout->Mask(0).to(q.scalar_type()))
                 .view({B * nh, T, T});
  } else {
    const at::Tensor mask = at::full({T, T}, -std::numeric_limits<float>::infinity(), hidden.options()).triu(1);
    scores = at::baddbmm(mask.expand({B * nh, T, T}), q, k.transpose(1, 2));
  }
  if (scores.requires_grad()) {
    scores = at::softmax(scores, -1);  // learning (OmniQuant): autograd cannot see in-place outputs
  } else {
    at::_softmax_out(scores, scores, -1, false);  // in place
  }
  at::Tensor attn =
      at::bmm(scores, v).view({B, nh, T, hd}).transpose(1, 2).reshape({B, T, nh * hd});
  // Free what attn was made of before out_proj's input is observed: a
  // staged forward (staged_forward.h) pauses there, holding what is alive.
  x.reset();
  q.reset();
  k.reset();
  v.reset();
  scores.reset();
  attn = QuantizeActivation(layer.act, ActPoint::kAttnOut, attn);
  observe("self_attn.out_proj", attn);
  return ApplyLinear(layer.linears[3], attn);
}

at::Tensor OptMlpForward(const OptLayer& layer, const ModelConfig& /*config*/,
                         const at::Tensor& hidden, const LinearInputHook& hook) {
  auto observe = [&](const char* name, const at::Tensor& x) {
    if (hook) hook(name, x.reshape({-1, x.size(-1)}));
  };
  at::Tensor x = QuantizeActivation(layer.act, ActPoint::kMlpIn,
                                    OptLayerNorm(Reorder(hidden, layer.final_reorder), layer.final_layer_norm));
  observe("fc1", x);
  at::Tensor a = QuantizeActivation(layer.act, ActPoint::kMlpHidden, at::relu(ApplyLinear(layer.linears[4], x)));
  x.reset();
  observe("fc2", a);
  return ApplyLinear(layer.linears[5], a);
}

at::Tensor OptLayerForward(const OptLayer& layer, const ModelConfig& c, const at::Tensor& hidden,
                           const LinearInputHook& hook, const TokenLayout* layout) {
  at::Tensor h = hidden + OptAttentionForward(layer, c, hidden, hook, layout);
  return h + OptMlpForward(layer, c, h, hook);
}

at::Tensor OptLogits(const OptHead& head, const ModelConfig& /*config*/, const at::Tensor& hidden) {
  return at::matmul(OptLayerNorm(hidden, head.final_norm), head.lm_head.t());
}

}  // namespace qaas::quant
