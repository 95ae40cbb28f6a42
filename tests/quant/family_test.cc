// The LLaMA-like families (Llama 3.x, Mistral, Qwen2, Qwen3, Gemma 2/3, Phi-3) and every RoPE
// scaling type against Transformers: tiny random models made by
// Transformers' own classes with each feature ON at the test's length
// (scripts/reference/make_family_references.py), our float32 logits within
// 1e-5 (relative to the largest logit) of its float64 logits at positions
// 12..23 of 24 (past every window and original context). Each case also
// checks that switching its feature off moves the logits far beyond that,
// so a feature silently ignored would fail.
#include <ATen/ATen.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/llama.h"
#include "quant/util/status_macros.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;
using nlohmann::json;

// Our float32 logits [T, vocab] of the model in `dir` for `ids`.
absl::StatusOr<at::Tensor> Logits(const std::string& dir, const std::vector<int64_t>& ids) {
  QAAS_ASSIGN_OR_RETURN(auto ck, Checkpoint::Open(dir));
  const int64_t T = static_cast<int64_t>(ids.size());
  QAAS_ASSIGN_OR_RETURN(auto model, DecoderModel::Create(*ck, at::kCPU, T));
  at::Tensor hidden = model->Embed(at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, T}));
  for (int i = 0; i < ck->config().num_layers; ++i) {
    QAAS_ASSIGN_OR_RETURN(const DecoderLayer layer, model->LoadLayer(i));
    hidden = model->LayerForward(layer, hidden);
  }
  return model->Logits(hidden)[0];
}

double MaxRelDiff(const at::Tensor& ours, const at::Tensor& reference) {
  return ((ours.to(at::kDouble) - reference).abs().max() / reference.abs().max()).item<double>();
}

json Reference() { return json::parse(ReadLocalFile(ReferencePath("family_reference.json"))); }

class FamilyTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const json reference = Reference();
    for (const json& c : reference["cases"]) {
      if (c["case"] == GetParam()) case_ = c;
    }
    ASSERT_FALSE(case_.is_null()) << "no case " << GetParam() << " in family_reference.json";
    dir_ = ReferencePath("families/" + GetParam());
    ids_ = case_["ids"].get<std::vector<int64_t>>();
    std::vector<double> flat;
    for (const json& row : case_["logits"]) {
      for (const json& v : row) flat.push_back(v.get<double>());
    }
    first_ = case_["first_position"].get<int64_t>();
    reference_ = at::tensor(flat, at::TensorOptions().dtype(at::kDouble))
                     .view({static_cast<int64_t>(ids_.size()) - first_, -1});
  }

  // The logits of this case's weights under `config` (a mutated config.json).
  at::Tensor LogitsWith(const json& config) {
    const std::string dir = tmp_.path() + "/m";
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(dir_ + "/model.safetensors", dir + "/model.safetensors",
                               std::filesystem::copy_options::overwrite_existing);
    WriteLocalFile(dir + "/config.json", config.dump());
    auto logits = Logits(dir, ids_);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? logits->narrow(0, first_, logits->size(0) - first_) : at::Tensor();
  }

  json case_;
  std::string dir_;
  std::vector<int64_t> ids_;
  int64_t first_ = 0;  // the reference holds positions first_..T-1
  at::Tensor reference_;
  ScopedTempDir tmp_;
};

TEST_P(FamilyTest, FloatLogitsMatchTransformersFloat64) {
  auto all = Logits(dir_, ids_);
  QAAS_ASSERT_OK(all);
  const at::Tensor ours = all->narrow(0, first_, all->size(0) - first_);
  ASSERT_EQ(ours.sizes(), reference_.sizes());
  const double diff = MaxRelDiff(ours, reference_);
  std::printf("%-15s %s: max relative difference %.2e\n", GetParam().c_str(),
              case_["features"].get<std::string>().c_str(), diff);
  EXPECT_LE(diff, 1e-5) << case_["features"];
}

// With the case's feature switched off the logits move far beyond the
// tolerance: the reference really exercises it.
TEST_P(FamilyTest, TheFeatureChangesTheResult) {
  const json config = json::parse(ReadLocalFile(dir_ + "/config.json"));
  int mutated = 0;
  if (config.contains("rope_parameters") && config["rope_parameters"].value("rope_type", "default") != "default") {
    json off = config;
    off["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", config["rope_parameters"]["rope_theta"]}};
    EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << "rope scaling off";
    ++mutated;
  }
  if (config.contains("sliding_window") && !config["sliding_window"].is_null() &&
      config.value("use_sliding_window", true)) {
    json off = config;
    off["sliding_window"] = nullptr;
    off.erase("layer_types");
    EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << "sliding window off";
    ++mutated;
  }
  if (config["model_type"] == "qwen3") {
    // q/k norms: the same weights read as Qwen2 without biases (no norms).
    json off = config;
    off["model_type"] = "llama";
    for (const char* key : {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}) off.erase(key);
    json on = off;
    on["model_type"] = "qwen3";
    EXPECT_GT(MaxRelDiff(LogitsWith(off), LogitsWith(on).to(at::kDouble)), 1e-3) << "q/k norms off";
    ++mutated;
  }
  if (config.value("attention_bias", false) || config.value("mlp_bias", false)) {
    json off = config;
    off["attention_bias"] = false;
    off["mlp_bias"] = false;
    EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << "biases off";
    ++mutated;
  }
  if (config.contains("num_experts_per_tok")) {
    // The router's top k, and whether it renormalizes them.
    json off = config;
    off["num_experts_per_tok"] = 1;
    EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << "top-1 routing";
    ++mutated;
    if (config.contains("norm_topk_prob")) {
      off = config;
      off["norm_topk_prob"] = !config["norm_topk_prob"].get<bool>();
      EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << "norm_topk_prob flipped";
      ++mutated;
    }
  }
  for (const char* cap : {"attn_logit_softcapping", "final_logit_softcapping"}) {
    if (config.contains(cap) && !config[cap].is_null()) {
      json off = config;
      off[cap] = nullptr;
      EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << cap << " off";
      ++mutated;
    }
  }
  if (config.contains("query_pre_attn_scalar") && config["query_pre_attn_scalar"] != config["head_dim"]) {
    json off = config;
    off["query_pre_attn_scalar"] = config["head_dim"];
    EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << "query_pre_attn_scalar off";
    ++mutated;
  }
  if (config.contains("rope_parameters") && config["rope_parameters"].contains("sliding_attention")) {
    // Gemma 3's local RoPE: the sliding layers on the global one's theta.
    json off = config;
    off["rope_parameters"]["sliding_attention"]["rope_theta"] = config["rope_parameters"]["full_attention"]["rope_theta"];
    EXPECT_GT(MaxRelDiff(LogitsWith(off), reference_), 1e-3) << "local RoPE off";
    ++mutated;
  }
  if (config.value("partial_rotary_factor", 1.0) != 1.0) {
    json off = config;
    off["partial_rotary_factor"] = 1.0;
    off["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", config["rope_parameters"]["rope_theta"]}};
    json on = config;  // the same RoPE, rotating part of each head
    on["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", config["rope_parameters"]["rope_theta"]},
                             {"partial_rotary_factor", config["partial_rotary_factor"]}};
    EXPECT_GT(MaxRelDiff(LogitsWith(off), LogitsWith(on).to(at::kDouble)), 1e-3) << "partial rotary off";
    ++mutated;
  }
  EXPECT_GT(mutated, 0) << "case " << GetParam() << " switches nothing off";
}

// Mixtures of experts: every token's router picks, layer by layer through
// the float model, are Transformers' (the same experts in the same order).
TEST_P(FamilyTest, RouterPicksTheExpertsTransformersPicks) {
  if (!case_.contains("routing") || case_["routing"].is_null()) GTEST_SKIP() << GetParam() << " is dense";
  auto ck = Checkpoint::Open(dir_);
  QAAS_ASSERT_OK(ck);
  const ModelConfig& c = (*ck)->config();
  const int64_t T = static_cast<int64_t>(ids_.size());
  auto model = DecoderModel::Create(**ck, at::kCPU, T);
  QAAS_ASSERT_OK(model);
  at::Tensor hidden = (*model)->Embed(at::tensor(ids_, at::TensorOptions().dtype(at::kLong)).view({1, T}));
  ASSERT_EQ(case_["routing"].size(), static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    auto layer = (*model)->LoadLayer(i);
    QAAS_ASSERT_OK(layer);
    // The router reads the MLP's normed input: the post-attention state.
    const at::Tensor h = hidden + (*model)->AttentionForward(*layer, hidden);
    LlamaLayer l;
    l.router = layer->norm(RouterName(c));
    const LlamaNormNames n = NormNamesOf(c);
    const at::Tensor x = RmsNorm(h, layer->norm(n.mlp_in), c.rms_norm_eps);
    auto [experts, weights] = RouteTokens(l, c, x);
    const auto want = case_["routing"][i].get<std::vector<std::vector<int64_t>>>();
    ASSERT_EQ(experts.size(0), static_cast<int64_t>(want.size()));
    std::set<int64_t> used;
    for (size_t t = 0; t < want.size(); ++t) {
      for (size_t k = 0; k < want[t].size(); ++k) {
        EXPECT_EQ(experts[t][k].item<int64_t>(), want[t][k]) << "layer " << i << " token " << t;
        used.insert(want[t][k]);
      }
    }
    EXPECT_EQ(static_cast<int>(used.size()), c.moe.num_experts) << "every expert is used in layer " << i;
    hidden = (*model)->LayerForward(*layer, hidden);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyTest,
                         ::testing::Values("llama3", "llama-linear", "llama-dynamic", "llama-yarn", "llama-longrope",
                                           "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "phi3-mini",
                                           "mixtral", "qwen2-moe", "qwen3-moe"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

}  // namespace
}  // namespace qaas::quant
