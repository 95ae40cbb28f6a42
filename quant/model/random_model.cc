#include "quant/model/random_model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "quant/model/checkpoint.h"
#include "quant/model/tokenizer.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::Status WriteRandomLlama(const RandomModelOptions& o, const std::string& dir) {
  if (o.hidden_size % o.num_heads != 0 || o.num_heads % o.num_kv_heads != 0 || o.shards < 1) {
    return absl::InvalidArgumentError("random model: inconsistent head counts or shards");
  }
  if (o.num_experts < 0 || (o.num_experts > 0 && (o.experts_per_token < 1 || o.experts_per_token > o.num_experts))) {
    return absl::InvalidArgumentError("random model: experts_per_token must be 1..num_experts");
  }
  at::ScalarType dtype = at::kFloat;
  if (o.dtype == "float16") {
    dtype = at::kHalf;
  } else if (o.dtype == "bfloat16") {
    dtype = at::kBFloat16;
  } else if (o.dtype != "float32") {
    return absl::InvalidArgumentError(absl::StrCat("random model: unknown dtype '", o.dtype, "'"));
  }
  QAAS_RETURN_IF_ERROR(MakeDirs(dir));
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  const int64_t h = o.hidden_size, hd = o.hidden_size / o.num_heads, m = o.intermediate_size;
  const int64_t kv = int64_t{o.num_kv_heads} * hd;
  auto randn = [&](std::vector<int64_t> shape) {
    return (at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)) * o.init_std).to(dtype);
  };
  auto ones = [&](int64_t n) { return at::ones({n}, at::TensorOptions().dtype(dtype)); };

  std::vector<std::vector<RawTensor>> shards(o.shards);
  shards[0].push_back(TensorToRaw("model.embed_tokens.weight", randn({o.vocab_size, h})));
  for (int i = 0; i < o.num_layers; ++i) {
    auto& out = shards[static_cast<size_t>(i) * o.shards / std::max(1, o.num_layers)];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    out.push_back(TensorToRaw(p + "input_layernorm.weight", ones(h)));
    out.push_back(TensorToRaw(p + "post_attention_layernorm.weight", ones(h)));
    out.push_back(TensorToRaw(p + "self_attn.q_proj.weight", randn({h, h})));
    out.push_back(TensorToRaw(p + "self_attn.k_proj.weight", randn({kv, h})));
    out.push_back(TensorToRaw(p + "self_attn.v_proj.weight", randn({kv, h})));
    out.push_back(TensorToRaw(p + "self_attn.o_proj.weight", randn({h, h})));
    if (o.num_experts == 0) {
      out.push_back(TensorToRaw(p + "mlp.gate_proj.weight", randn({m, h})));
      out.push_back(TensorToRaw(p + "mlp.up_proj.weight", randn({m, h})));
      out.push_back(TensorToRaw(p + "mlp.down_proj.weight", randn({h, m})));
      continue;
    }
    out.push_back(TensorToRaw(p + "block_sparse_moe.gate.weight", randn({o.num_experts, h})));
    for (int e = 0; e < o.num_experts; ++e) {
      const std::string x = absl::StrCat(p, "block_sparse_moe.experts.", e, ".");
      out.push_back(TensorToRaw(x + "w1.weight", randn({m, h})));
      out.push_back(TensorToRaw(x + "w2.weight", randn({h, m})));
      out.push_back(TensorToRaw(x + "w3.weight", randn({m, h})));
    }
  }
  shards.back().push_back(TensorToRaw("model.norm.weight", ones(h)));
  if (!o.tie_word_embeddings) shards.back().push_back(TensorToRaw("lm_head.weight", randn({o.vocab_size, h})));

  if (o.shards == 1) {
    QAAS_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", shards[0], {{"format", "pt"}}));
  } else {
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
    uint64_t total = 0;
    for (int s = 0; s < o.shards; ++s) {
      const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, o.shards);
      for (const auto& t : shards[s]) {
        index["weight_map"][t.name] = name;
        total += t.data.size();
      }
      QAAS_RETURN_IF_ERROR(WriteSafetensors(dir + "/" + name, shards[s], {{"format", "pt"}}));
    }
    index["metadata"]["total_size"] = total;
    QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/model.safetensors.index.json", index.dump(2)));
  }

  nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                           {"model_type", "llama"},
                           {"hidden_size", o.hidden_size},
                           {"intermediate_size", o.intermediate_size},
                           {"num_hidden_layers", o.num_layers},
                           {"num_attention_heads", o.num_heads},
                           {"num_key_value_heads", o.num_kv_heads},
                           {"vocab_size", o.vocab_size},
                           {"max_position_embeddings", o.max_position_embeddings},
                           {"rms_norm_eps", 1e-5},
                           {"rope_theta", 10000.0},
                           {"hidden_act", "silu"},
                           {"tie_word_embeddings", o.tie_word_embeddings},
                           {"bos_token_id", 1},
                           {"eos_token_id", 2},
                           {"torch_dtype", o.dtype}};
  if (o.num_experts > 0) {
    config["architectures"] = {"MixtralForCausalLM"};
    config["model_type"] = "mixtral";
    config["num_local_experts"] = o.num_experts;
    config["num_experts_per_tok"] = o.experts_per_token;
  }
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/config.json", config.dump(2) + "\n"));
  nlohmann::json tok_config = {{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"},
                               {"eos_token", "</s>"},                 {"unk_token", "<unk>"},
                               {"add_bos_token", true},               {"add_eos_token", false}};
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/tokenizer_config.json", tok_config.dump(2) + "\n"));
  if (!o.tokenizer_model.empty()) return CopyFile(o.tokenizer_model, dir + "/tokenizer.model");
  if (!o.tokenizer_text.empty()) {
    QAAS_ASSIGN_OR_RETURN(auto model, TrainBpeModel(o.tokenizer_text, o.vocab_size));
    return WriteFileAtomic(dir + "/tokenizer.model", SerializeSentencePieceModel(model));
  }
  return absl::InvalidArgumentError("random model: give tokenizer_model or tokenizer_text");
}

}  // namespace qaas::quant
