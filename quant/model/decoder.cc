#include "quant/model/decoder.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/model/opt.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

at::Tensor DecoderLayer::norm(const std::string& name) const {
  for (const auto& [n, t] : norms) {
    if (n == name) return t;
  }
  return at::Tensor();
}

void DecoderLayer::set_norm(const std::string& name, const at::Tensor& t) {
  for (auto& [n, v] : norms) {
    if (n == name) {
      v = t;
      return;
    }
  }
  norms.emplace_back(name, t);
}

DecoderLayer DecoderLayer::To(const at::Device& device) const {
  DecoderLayer out;
  out.index = index;
  if (act) out.act = std::make_shared<const LayerActQuant>(act->To(device));
  for (const auto& [name, t] : norms) out.norms.emplace_back(name, t.to(device));
  for (const auto& l : linears) {
    out.linears.push_back({l.weight.to(device), l.bias.defined() ? l.bias.to(device) : l.bias});
  }
  return out;
}

at::Tensor QueryKeyLayout::Expand(const at::Tensor& s) const {
  if (rotary_dim == 0) return s;
  const int64_t half = rotary_dim / 2;
  const at::Tensor pairs = s.narrow(-1, 0, half);
  return at::cat({pairs, pairs, s.narrow(-1, half, s.size(-1) - half)}, -1);
}

at::Tensor ForwardBatched(const DecoderModel& model, const DecoderLayer& layer, const at::Tensor& hidden, int batch,
                          const LinearInputHook& hook) {
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < hidden.size(0); i += batch) {
    const int64_t n = std::min<int64_t>(batch, hidden.size(0) - i);
    outs.push_back(model.LayerForward(layer, hidden.narrow(0, i, n), hook));
  }
  return at::cat(outs, 0);
}

namespace {

// Adapters: each converts a DecoderLayer to its architecture's layer struct
// (sharing the tensors, no copies) and calls the architecture's forward.

class LlamaModel : public DecoderModel {
 public:
  LlamaModel(const Checkpoint& ck, LlamaHead head, const at::Device& device, int64_t max_len)
      : ck_(ck), config_(ck.config()), head_(std::move(head)), rope_(config_, max_len, device) {
    // A tied head is the embedding itself: one copy on the device.
    const bool tied = head_.lm_head.is_same(head_.embed);
    head_.embed = head_.embed.to(device);
    head_.final_norm = head_.final_norm.to(device);
    head_.lm_head = tied ? head_.embed : head_.lm_head.to(device);
    names_ = LinearNamesOf(config_);
    // The MLP's linears in threes (gate, up, down): one MLP when dense, else
    // each expert's, then the shared expert's. A MoE layer's experts are
    // quantized one after another, so no two hold Hessians at once.
    groups_ = {{"qkv", {0, 1, 2}}, {"o", {3}}};
    consumers_ = {{0, 1, 2}, {3}, {}, {}};
    observers_ = {{0}, {3}, {}, {}};
    producers_ = {{}, {2}, {}, {}};
    const int mlps = static_cast<int>(names_.size() - 4) / 3;
    for (int e = 0; e < mlps; ++e) {
      const int g = 4 + 3 * e;
      std::string stem = config_.moe.num_experts == 0      ? ""
                         : e < config_.moe.num_experts ? absl::StrCat("expert.", e, ".")
                                                       : "shared_expert.";
      const int expert = e < config_.moe.num_experts ? e : -1;
      groups_.push_back({stem + "gate_up", {g, g + 1}, expert});
      groups_.push_back({stem + "down", {g + 2}, expert});
      consumers_[static_cast<int>(ActPoint::kMlpIn)].insert(consumers_[static_cast<int>(ActPoint::kMlpIn)].end(),
                                                            {g, g + 1});
      consumers_[static_cast<int>(ActPoint::kMlpHidden)].push_back(g + 2);
      observers_[static_cast<int>(ActPoint::kMlpIn)].push_back(g);
      observers_[static_cast<int>(ActPoint::kMlpHidden)].push_back(g + 2);
    }
    // MLP-hidden channels come one to one from gate/up rows only when there
    // is one MLP (RPTQ's reorder); experts each have their own.
    if (mlps == 1) producers_[static_cast<int>(ActPoint::kMlpHidden)] = {4, 5};
  }

  void set_experts_observe_all_tokens(bool all) override { experts_observe_all_tokens_ = all; }
  void set_observed_expert(int expert) override { observed_expert_ = expert; }
  const std::vector<std::string>& LinearNames() const override { return names_; }
  const std::vector<LinearGroup>& SequentialGroups() const override { return groups_; }
  const std::vector<FusedLinear>& Fusions() const override {
    static const std::vector<FusedLinear> kNone, kPhi3 = {{"self_attn.qkv_proj", {0, 1, 2}},
                                                          {"mlp.gate_up_proj", {4, 5}}};
    return config_.fused_qkv ? kPhi3 : kNone;  // ParseModelConfig sets both or neither
  }
  AdaDimBlock DecidingBlock(int j) const override {
    if (j <= 2) return AdaDimBlock::kAttention;
    if (j >= 4 && (j - 4) % 3 != 2) return AdaDimBlock::kMlp;  // an MLP's gate or up
    return AdaDimBlock::kOwnOutput;
  }
  const std::vector<int>& ConsumersOf(ActPoint p) const override { return consumers_[static_cast<int>(p)]; }
  const std::vector<int>& ProducersOf(ActPoint p) const override { return producers_[static_cast<int>(p)]; }
  std::vector<int> ObserversOf(ActPoint p) const override { return observers_[static_cast<int>(p)]; }
  std::vector<std::string> FloatReadersOf(ActPoint p) const override {
    if (p != ActPoint::kMlpIn || config_.moe.num_experts == 0) return {};
    std::vector<std::string> readers = {RouterName(config_)};
    if (config_.moe.shared_expert_intermediate_size > 0) readers.push_back(SharedExpertGateName(config_));
    return readers;
  }
  BlockNorm NormOf(ActPoint p) const override {
    const LlamaNormNames n = NormNamesOf(config_);
    const std::string& weight = p == ActPoint::kAttnIn ? n.attn_in : n.mlp_in;
    return {weight, "", ReorderName(weight)};
  }
  at::Tensor StoredNorm(const std::string& name, const at::Tensor& t) const override {
    const double offset = config_.norm_weight_offset;
    const bool weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    return offset != 0 && weight && at::is_floating_point(t) ? t - offset : t;
  }
  QueryKeyLayout QueryKey() const override {
    QueryKeyLayout layout;
    layout.rotary_dim = config_.rotary_dim;
    if (config_.qk_norm) {
      layout.q_norm = "self_attn.q_norm.weight";
      layout.k_norm = "self_attn.k_norm.weight";
    }
    return layout;
  }
  const ModelConfig& config() const override { return config_; }
  std::string LayerPrefix(int index) const override { return ::qaas::quant::LayerPrefix(index); }
  std::vector<std::string> HeadTensorNames() const override {
    std::vector<std::string> names;
    for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) {
      if (ck_.Has(name)) names.push_back(name);
    }
    return names;
  }

  absl::StatusOr<DecoderLayer> LoadLayer(int index) const override {
    QAAS_ASSIGN_OR_RETURN(auto layer, LoadLlamaLayer(ck_, index));
    const LlamaNormNames n = NormNamesOf(config_);
    DecoderLayer out;
    out.index = index;
    out.norms = {{n.attn_in, layer.input_norm}};
    if (layer.attn_out_norm.defined()) out.norms.emplace_back(n.attn_out, layer.attn_out_norm);
    out.norms.emplace_back(n.mlp_in, layer.post_norm);
    if (layer.mlp_out_norm.defined()) out.norms.emplace_back(n.mlp_out, layer.mlp_out_norm);
    if (layer.q_norm.defined()) {
      out.norms.emplace_back("self_attn.q_norm.weight", layer.q_norm);
      out.norms.emplace_back("self_attn.k_norm.weight", layer.k_norm);
    }
    // The router and the shared-expert gate stay float, as the norms do.
    if (layer.router.defined()) out.norms.emplace_back(RouterName(config_), layer.router);
    if (layer.shared_expert_gate.defined()) {
      out.norms.emplace_back(SharedExpertGateName(config_), layer.shared_expert_gate);
    }
    out.linears = std::move(layer.linears);
    return out;
  }

  at::Tensor Embed(const at::Tensor& ids) const override {
    at::Tensor e = at::embedding(head_.embed, ids.to(head_.embed.device()));
    return config_.embed_scale != 1.0 ? e * config_.embed_scale : e;  // Gemma: x sqrt(hidden)
  }
  at::Tensor AttentionForward(const DecoderLayer& l, const at::Tensor& hidden,
                              const LinearInputHook& hook) const override {
    return LlamaAttentionForward(AsLlama(l), config_, rope_, hidden, hook);
  }
  at::Tensor MlpForward(const DecoderLayer& l, const at::Tensor& hidden,
                        const LinearInputHook& hook) const override {
    return LlamaMlpForward(AsLlama(l), config_, hidden, hook);
  }
  at::Tensor LayerForward(const DecoderLayer& l, const at::Tensor& hidden,
                          const LinearInputHook& hook) const override {
    return LlamaLayerForward(AsLlama(l), config_, rope_, hidden, hook);
  }
  at::Tensor Embed(const at::Tensor& ids, const TokenLayout& /*layout*/) const override {
    return Embed(ids);  // RoPE: positions enter in the attention
  }
  at::Tensor LayerForward(const DecoderLayer& l, const at::Tensor& hidden,
                          const TokenLayout& layout) const override {
    return LlamaLayerForward(AsLlama(l), config_, rope_, hidden, nullptr, &layout);
  }
  at::Tensor Logits(const at::Tensor& hidden) const override {
    at::Tensor logits = at::matmul(RmsNorm(hidden, head_.final_norm, config_.rms_norm_eps), head_.lm_head.t());
    if (config_.final_logit_softcap > 0) {  // Gemma 2: cap * tanh(logits / cap)
      logits = at::tanh(logits / config_.final_logit_softcap) * config_.final_logit_softcap;
    }
    return logits;
  }

 private:
  // "input_layernorm.weight" -> "input_layernorm.reorder_index"
  static std::string ReorderName(const std::string& weight) {
    return weight.substr(0, weight.rfind('.')) + ".reorder_index";
  }

  LlamaLayer AsLlama(const DecoderLayer& l) const {
    const LlamaNormNames n = NormNamesOf(config_);
    LlamaLayer out;
    out.index = l.index;
    out.input_norm = l.norm(n.attn_in);
    out.q_norm = l.norm("self_attn.q_norm.weight");
    out.k_norm = l.norm("self_attn.k_norm.weight");
    out.post_norm = l.norm(n.mlp_in);
    if (config_.sandwich_norms) {
      out.attn_out_norm = l.norm(n.attn_out);
      out.mlp_out_norm = l.norm(n.mlp_out);
    }
    if (config_.moe.num_experts > 0) {
      out.experts_observe_all_tokens = experts_observe_all_tokens_;
      out.observe_only_expert = observed_expert_;
      out.router = l.norm(RouterName(config_));
      out.shared_expert_gate = l.norm(SharedExpertGateName(config_));
    }
    out.input_reorder = l.norm(ReorderName(n.attn_in));
    out.post_reorder = l.norm(ReorderName(n.mlp_in));
    out.linears = l.linears;
    out.act = l.act;
    return out;
  }

  const Checkpoint& ck_;
  const ModelConfig& config_;
  LlamaHead head_;
  Rope rope_;
  std::vector<std::string> names_;
  std::vector<LinearGroup> groups_;
  std::vector<std::vector<int>> consumers_, observers_, producers_;  // by ActPoint
  bool experts_observe_all_tokens_ = false;
  int observed_expert_ = -1;
};

class OptModel : public DecoderModel {
 public:
  OptModel(const Checkpoint& ck, OptHead head, const at::Device& device)
      : ck_(ck), config_(ck.config()), head_(std::move(head)) {
    auto to = [&](at::Tensor& t) {
      if (t.defined()) t = t.to(device);
    };
    const bool tied = head_.lm_head.is_same(head_.embed_tokens);  // one copy on the device
    to(head_.embed_tokens);
    to(head_.embed_positions);
    to(head_.final_norm.weight);
    to(head_.final_norm.bias);
    if (tied) {
      head_.lm_head = head_.embed_tokens;
    } else {
      to(head_.lm_head);
    }
  }

  const std::vector<std::string>& LinearNames() const override { return OptLinearNames(); }
  const std::vector<LinearGroup>& SequentialGroups() const override {
    static const std::vector<LinearGroup> kGroups = {{"qkv", {0, 1, 2}}, {"out", {3}}, {"fc1", {4}}, {"fc2", {5}}};
    return kGroups;
  }
  const std::vector<FusedLinear>& Fusions() const override {
    static const std::vector<FusedLinear> kNone;
    return kNone;
  }
  AdaDimBlock DecidingBlock(int j) const override {
    if (j <= 2) return AdaDimBlock::kAttention;
    if (j == 4) return AdaDimBlock::kMlp;
    return AdaDimBlock::kOwnOutput;
  }
  const std::vector<int>& ConsumersOf(ActPoint p) const override {
    static const std::vector<std::vector<int>> kConsumers = {{0, 1, 2}, {3}, {4}, {5}};
    return kConsumers[static_cast<int>(p)];
  }
  const std::vector<int>& ProducersOf(ActPoint p) const override {
    static const std::vector<std::vector<int>> kProducers = {{}, {2}, {}, {4}};
    return kProducers[static_cast<int>(p)];
  }
  BlockNorm NormOf(ActPoint p) const override {
    const std::string n = p == ActPoint::kAttnIn ? "self_attn_layer_norm" : "final_layer_norm";
    if (!config_.layer_norm_elementwise_affine) return {"", "", n + ".reorder_index"};
    return {n + ".weight", n + ".bias", n + ".reorder_index"};
  }
  at::Tensor StoredNorm(const std::string&, const at::Tensor& t) const override { return t; }
  QueryKeyLayout QueryKey() const override { return {}; }  // learned positions: no rotary, no q/k norms
  const ModelConfig& config() const override { return config_; }
  std::string LayerPrefix(int index) const override { return OptLayerPrefix(ck_, index); }
  std::vector<std::string> HeadTensorNames() const override {
    const std::string d = OptDecoderPrefix(ck_);
    std::vector<std::string> names;
    for (const std::string& name :
         {d + "embed_tokens.weight", d + "embed_positions.weight", d + "final_layer_norm.weight",
          d + "final_layer_norm.bias", std::string("lm_head.weight")}) {
      if (ck_.Has(name)) names.push_back(name);
    }
    return names;
  }

  absl::StatusOr<DecoderLayer> LoadLayer(int index) const override {
    QAAS_ASSIGN_OR_RETURN(auto layer, LoadOptLayer(ck_, index));
    DecoderLayer out;
    out.index = index;
    auto add = [&](const std::string& name, const LayerNormWeights& n) {
      if (n.weight.defined()) out.norms.emplace_back(name + ".weight", n.weight);
      if (n.bias.defined()) out.norms.emplace_back(name + ".bias", n.bias);
    };
    add("self_attn_layer_norm", layer.self_attn_layer_norm);
    add("final_layer_norm", layer.final_layer_norm);
    out.linears = std::move(layer.linears);
    return out;
  }

  at::Tensor Embed(const at::Tensor& ids) const override {
    return OptEmbed(head_, ids.to(head_.embed_tokens.device()));
  }
  at::Tensor AttentionForward(const DecoderLayer& l, const at::Tensor& hidden,
                              const LinearInputHook& hook) const override {
    return OptAttentionForward(AsOpt(l), config_, hidden, hook);
  }
  at::Tensor MlpForward(const DecoderLayer& l, const at::Tensor& hidden,
                        const LinearInputHook& hook) const override {
    return OptMlpForward(AsOpt(l), config_, hidden, hook);
  }
  at::Tensor LayerForward(const DecoderLayer& l, const at::Tensor& hidden,
                          const LinearInputHook& hook) const override {
    return OptLayerForward(AsOpt(l), config_, hidden, hook);
  }
  at::Tensor Embed(const at::Tensor& ids, const TokenLayout& layout) const override {
    return OptEmbed(head_, ids.to(head_.embed_tokens.device()), layout.positions);
  }
  at::Tensor LayerForward(const DecoderLayer& l, const at::Tensor& hidden,
                          const TokenLayout& layout) const override {
    return OptLayerForward(AsOpt(l), config_, hidden, nullptr, &layout);
  }
  at::Tensor Logits(const at::Tensor& hidden) const override {
    return OptLogits(head_, config_, hidden);
  }

 private:
  static OptLayer AsOpt(const DecoderLayer& l) {
    OptLayer out;
    out.self_attn_layer_norm = {l.norm("self_attn_layer_norm.weight"),
                                l.norm("self_attn_layer_norm.bias")};
    out.final_layer_norm = {l.norm("final_layer_norm.weight"), l.norm("final_layer_norm.bias")};
    out.self_attn_reorder = l.norm("self_attn_layer_norm.reorder_index");
    out.final_reorder = l.norm("final_layer_norm.reorder_index");
    out.linears = l.linears;
    out.act = l.act;
    return out;
  }

  const Checkpoint& ck_;
  const ModelConfig& config_;
  OptHead head_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::Create(const Checkpoint& ck,
                                                                   const at::Device& device,
                                                                   int64_t max_len) {
  const std::string& arch = ck.config().architecture;
  if (arch == "llama") {
    QAAS_ASSIGN_OR_RETURN(auto head, LoadLlamaHead(ck));
    return std::unique_ptr<DecoderModel>(new LlamaModel(ck, std::move(head), device, max_len));
  }
  if (arch == "opt") {
    QAAS_ASSIGN_OR_RETURN(auto head, LoadOptHead(ck));
    return std::unique_ptr<DecoderModel>(new OptModel(ck, std::move(head), device));
  }
  return absl::InvalidArgumentError(absl::StrCat("architecture '", arch, "' (model_type '",
                                                 ck.config().model_type,
                                                 "') is not one the pipeline runs"));
}

}  // namespace qaas::quant
