// Every method on every LLaMA-like family (Llama 3, Mistral, Qwen2, Qwen3,
// Gemma 2, Gemma 3, Phi-3): whole jobs on the tiny models of
// tests/data/families (made by Transformers, features on), each with a
// byte-fallback tokenizer trained here. Every job succeeds with finite
// perplexities and an artifact under the checkpoint's own tensor names, and
// GPTQ's block outputs are closer to the float model's than RTN's.
#include <filesystem>
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/export.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/llama.h"
#include "quant/pipeline.h"
#include "quant/report.h"
#include "quant/scheme.h"
#include "quant/util/status_macros.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using nlohmann::json;

struct Job {
  const char* scheme;
  std::vector<RecipeStep> recipe;
};

std::string Name(const Job& job) {
  std::string name = job.scheme;
  for (const auto& s : job.recipe) name += "+" + s.method;
  return name;
}

class FamilyPipelineTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = tmp_.path() + "/model";
    CopyModelForTinyText("families/" + GetParam(), model_);
    text_ = tmp_.path() + "/text.txt";
    WriteTinyText(text_);
  }

  absl::StatusOr<Report> Run(const Job& job, const std::string& out) {
    PipelineOptions o;
    o.model_dir = model_;
    o.output_dir = out;
    QAAS_ASSIGN_OR_RETURN(o.scheme, ParseScheme(job.scheme));
    o.recipe = job.recipe;
    o.calibration = DatasetRef{text_, "text", 24, 0};
    o.block_errors = true;  // RTN's block errors are the baseline GPTQ's are compared with
    o.num_samples = 4;
    o.evaluations = {DatasetRef{text_, "text", 24, 4}};
    return RunPipeline(o);
  }

  static double BlockError(const Report& r) {
    double sum = 0;
    for (const auto& b : r.blocks) sum += b.output_relative_error;
    return sum;
  }

  ScopedTempDir tmp_;
  std::string model_, text_;
};

TEST_P(FamilyPipelineTest, EveryMethodRunsAndExportsUnderTheCheckpointsNames) {
  const json config = json::parse(ReadLocalFile(model_ + "/config.json"));
  std::vector<Job> jobs = {
      {"W4A16g16", {{"rtn", {}}}},
      {"W4A16g16", {{"gptq", {}}}},
      {"W4A16g16", {{"adadim", {{"base", std::string("gptq")}}}}},
      {"W8A8", {{"smoothquant", {}}, {"gptq", {}}}},
      {"W4A4", {{"rptq", {}}, {"rtn", {}}}},
      {"W4A16g16", {{"omniquant", {{"epochs", 2}}}}},
      {"W4A4", {{"omniquant", {{"epochs", 2}}}}},  // LWC and LET
      {"W4A8KV4", {{"rtn", {}}}},
  };
  // MX blocks of 32 need every input width to be a multiple of 32.
  if (config["hidden_size"].get<int>() % 32 == 0) jobs.push_back({"Wmxint4A16", {{"rtn", {}}}});
  std::map<std::string, Report> reports;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const std::string name = Name(jobs[i]);
    SCOPED_TRACE(name);
    const std::string out = tmp_.path() + "/out" + std::to_string(i);
    const Job& job = jobs[i];
    auto report = Run(job, out);
    ASSERT_TRUE(report.ok()) << GetParam() << " " << name << ": " << report.status();
    ASSERT_EQ(report->evaluations.size(), 1u);
    const double ppl = report->evaluations[0].perplexity_quantized;
    EXPECT_TRUE(std::isfinite(ppl) && ppl > 1) << ppl;
    std::printf("%-14s %-28s perplexity %.3f (float %.3f), block error %.4f\n", GetParam().c_str(), name.c_str(), ppl,
                report->evaluations[0].perplexity_original, BlockError(*report));
    // The artifact names every tensor as the checkpoint does: norms (q/k
    // norms on Qwen3 and Gemma 3, Gemma's four per layer), biases,
    // embeddings; linears as GPTQ packs them (Phi-3's fused again).
    std::set<std::string> names;
    const auto artifact = ReadAll(out + "/artifact/model.safetensors");
    for (const auto& [n, t] : artifact) names.insert(n);
    const std::string last = "model.layers." + std::to_string(config["num_hidden_layers"].get<int>() - 1) + ".";
    for (const std::string& n : {std::string("model.embed_tokens.weight"), std::string("model.norm.weight"),
                                 last + "input_layernorm.weight", last + "post_attention_layernorm.weight"}) {
      EXPECT_TRUE(names.count(n)) << n;
    }
    const std::string type = config["model_type"];
    if (type == "qwen3" || type == "gemma3_text") {
      EXPECT_TRUE(names.count(last + "self_attn.q_norm.weight"));
      EXPECT_TRUE(names.count(last + "self_attn.k_norm.weight"));
    }
    if (type.rfind("gemma", 0) == 0) {
      EXPECT_TRUE(names.count(last + "pre_feedforward_layernorm.weight"));
      EXPECT_TRUE(names.count(last + "post_feedforward_layernorm.weight"));
    }
    if (type == "phi3" && Name(job) != "W4A16g16+adadim") {
      // (AdaDim's per-input-channel parts cannot share one packed tensor:
      // that qaas-format artifact keeps them split; its float copy fuses.)
      for (const char* fused : {"self_attn.qkv_proj", "mlp.gate_up_proj"}) {
        EXPECT_TRUE(names.count(last + fused + ".weight") || names.count(last + fused + ".qweight") ||
                    names.count(last + fused + ".mx_codes"))
            << fused;
      }
      for (const auto& n : names) EXPECT_EQ(n.find("q_proj"), std::string::npos) << n;
      EXPECT_FALSE(names.count(last + "mlp.gate_proj.qweight"));
    }
    // Where the recipe folds nothing into the norms they are the input's as
    // stored, bit for bit (Gemma's w, not the factor 1 + w the forward
    // multiplies by, nor (1 + w) - 1).
    auto input = Checkpoint::Open(model_);
    QAAS_ASSERT_OK(input);
    const int64_t hidden = config["hidden_size"].get<int64_t>();
    if (job.recipe.front().method == "rtn" || job.recipe.front().method == "gptq") {
      for (const std::string& norm : {last + "input_layernorm.weight", std::string("model.norm.weight")}) {
        auto stored = (*input)->Load(norm, {hidden});
        QAAS_ASSERT_OK(stored);
        EXPECT_TRUE(at::equal(*stored, RawToTensor(artifact.at(norm)).to(at::kFloat))) << norm;
      }
    }
    // The dequantized copy (AdaDim writes one) is a checkpoint of the
    // input's own family: it opens and runs as one.
    if (std::filesystem::exists(out + "/artifact-dequantized/model.safetensors")) {
      auto plain = Checkpoint::Open(out + "/artifact-dequantized");
      QAAS_ASSERT_OK(plain);
      auto model = DecoderModel::Create(**plain, at::kCPU, 24);
      QAAS_ASSERT_OK(model);
      QAAS_EXPECT_OK((*model)->LoadLayer(config["num_hidden_layers"].get<int>() - 1));
    }
    // GPTQ quantizes in the model's named true-sequential groups, and each
    // linear's report line says which.
    if (Name(job) == "W4A16g16+gptq") {
      const std::map<std::string, std::string> group_of = {
          {"self_attn.q_proj", "qkv"}, {"self_attn.k_proj", "qkv"},   {"self_attn.v_proj", "qkv"},
          {"self_attn.o_proj", "o"},   {"mlp.gate_proj", "gate_up"}, {"mlp.up_proj", "gate_up"},
          {"mlp.down_proj", "down"}};
      ASSERT_FALSE(report->layers.empty());
      for (const auto& l : report->layers) {
        const std::string linear = l.name.substr(l.name.find('.', l.name.find("layers.") + 7) + 1);
        EXPECT_EQ(l.group, group_of.at(linear)) << l.name;
      }
    }
    // GPTQ's packed fused projection unpacks, part by part in q, k, v order,
    // to weights as far from the input's as the report says each part is.
    if (type == "phi3" && Name(job) == "W4A16g16+gptq") {
      const std::string qkv = last + "self_attn.qkv_proj";
      const int64_t rows = hidden + 2 * (hidden / 2);  // q: 4 heads, k and v: 2 KV heads of 16
      auto original = (*input)->Load(qkv + ".weight", {rows, hidden});
      QAAS_ASSERT_OK(original);
      auto unpacked = UnpackGptqLinear(artifact, qkv, 4, hidden, rows);
      QAAS_ASSERT_OK(unpacked);
      const std::vector<int64_t> sizes = {hidden, hidden / 2, hidden / 2};
      const auto w = original->split_with_sizes(sizes, 0), q = unpacked->split_with_sizes(sizes, 0);
      const char* parts[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
      for (int p = 0; p < 3; ++p) {
        double reported = -1;
        for (const auto& l : report->layers) {
          if (l.name == last + parts[p]) reported = l.relative_weight_error;
        }
        EXPECT_NEAR(RelativeError(w[p], q[p]), reported, 1e-5) << parts[p];
      }
    }
    EXPECT_EQ(names.count(last + "self_attn.o_proj.bias") > 0, config.value("attention_bias", false));
    EXPECT_EQ(names.count("lm_head.weight") > 0, !config.value("tie_word_embeddings", false));
    reports.emplace(name, *std::move(report));
  }
  const double rtn = BlockError(reports.at("W4A16g16+rtn")), gptq = BlockError(reports.at("W4A16g16+gptq"));
  EXPECT_LT(gptq, rtn) << "GPTQ's block outputs should be nearer the float model's than RTN's";
}

// Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): weight-only jobs run;
// each expert is its own set of linears, calibrated on the tokens routed to
// it (their counts add up to tokens x top_k per layer); the router stays
// float; an expert that saw fewer than min_calibration_tokens is quantized
// with RTN and the report says so; transforms and activation quantization
// are refused by name.
class MoePipelineTest : public FamilyPipelineTest {};

TEST_P(MoePipelineTest, WeightOnlyMethodsRunAndExpertsCalibrateOnTheirTokens) {
  const json config = json::parse(ReadLocalFile(model_ + "/config.json"));
  auto ck = Checkpoint::Open(model_);
  QAAS_ASSERT_OK(ck);
  const ModelConfig& c = (*ck)->config();
  ASSERT_GT(c.moe.num_experts, 0);
  std::map<std::string, Report> reports;
  for (const Job& job : std::vector<Job>{{"W4A16g16", {{"rtn", {}}}},
                                         {"W4A16g16", {{"gptq", {}}}},
                                         {"W4A16g16", {{"adadim", {{"base", std::string("gptq")}}}}},
                                         {"W4A16g16", {{"omniquant", {{"epochs", 2}}}}}}) {
    const std::string name = Name(job);
    SCOPED_TRACE(name);
    const std::string out = tmp_.path() + "/" + name;
    auto report = Run(job, out);
    ASSERT_TRUE(report.ok()) << GetParam() << " " << name << ": " << report.status();
    const double ppl = report->evaluations[0].perplexity_quantized;
    EXPECT_TRUE(std::isfinite(ppl) && ppl > 1) << ppl;
    std::printf("%-10s %-22s perplexity %.3f (float %.3f), block error %.4f\n", GetParam().c_str(), name.c_str(), ppl,
                report->evaluations[0].perplexity_original, BlockError(*report));
    const auto artifact = ReadAll(out + "/artifact/model.safetensors");
    const std::string l0 = "model.layers.0.";
    EXPECT_TRUE(artifact.count(l0 + RouterName(c))) << "the router is stored float";
    const std::vector<std::string> names = LinearNamesOf(c);
    for (size_t j = 0; j < names.size(); ++j) {  // (AdaDim's per-input-channel ones under .ic)
      EXPECT_TRUE(artifact.count(l0 + names[j] + ".qweight") || artifact.count(l0 + names[j] + ".ic.qweight"))
          << names[j];
    }
    for (const auto& l : report->layers) EXPECT_EQ(l.name.find(".gate.weight"), std::string::npos) << l.name;
    // GPTQ's config lists exactly the quantized linears of a block, so a
    // loader (optimum) leaves the float router and shared-expert gate alone.
    if (job.recipe.front().method != "adadim") {
      const json qc = json::parse(ReadLocalFile(out + "/artifact/config.json"))["quantization_config"];
      ASSERT_EQ(qc["quant_method"], "gptq") << qc;
      std::vector<std::string> listed;
      for (const auto& group : qc["modules_in_block_to_quantize"]) {
        for (const auto& m : group) listed.push_back(m.get<std::string>());
      }
      std::vector<std::string> expected = names;
      if (c.moe.mixtral_names) {
        // Transformers 5's module names for the same experts, listed too.
        for (const std::string& n : names) {
          for (const auto& [w, v5] : {std::pair<std::string, std::string>{"w1", "gate_proj"}, {"w3", "up_proj"},
                                     {"w2", "down_proj"}}) {
            if (absl::EndsWith(n, "." + w)) {
              expected.push_back(absl::StrReplaceAll(n.substr(0, n.size() - w.size()),
                                                     {{"block_sparse_moe.", "mlp."}}) + v5);
            }
          }
        }
        EXPECT_EQ(expected.size(), names.size() + 3 * c.moe.num_experts);
      }
      std::sort(listed.begin(), listed.end());
      std::sort(expected.begin(), expected.end());
      EXPECT_EQ(listed, expected);
    }
    reports.emplace(name, *report);
  }
  // GPTQ's Hessians: each expert's from its routed tokens; the routed
  // counts of a layer's experts add up to tokens x top_k.
  const Report& gptq = reports.at("W4A16g16+gptq");
  const int64_t tokens = 4 * 24;  // num_samples x seq_len
  std::map<std::string, int64_t> per_expert;
  for (int i = 0; i < c.num_layers; ++i) {
    int64_t routed = 0;
    for (int e = 0; e < c.moe.num_experts; ++e) {
      const std::string gate = absl::StrCat("model.layers.", i, ".", LinearNamesOf(c)[4 + 3 * e]);
      for (const auto& l : gptq.layers) {
        if (l.name != gate) continue;
        EXPECT_GE(l.calibration_tokens, 0);
        routed += l.calibration_tokens;
        per_expert[gate] = l.calibration_tokens;
      }
    }
    EXPECT_EQ(routed, tokens * c.moe.top_k) << "layer " << i;
  }
  for (const auto& l : gptq.layers) {
    if (l.name.find("self_attn.") != std::string::npos || l.name.find("shared_expert") != std::string::npos) {
      EXPECT_EQ(l.calibration_tokens, tokens) << l.name;  // dense linears see every token
    }
  }
  EXPECT_LT(BlockError(gptq), BlockError(reports.at("W4A16g16+rtn")));

  // A threshold between the experts' counts: exactly the experts below it
  // fall back to RTN, with the reason in the report. (The counts of later
  // layers are the run's own: routing there follows the quantized stream,
  // which the fallbacks of earlier layers change.)
  std::vector<int64_t> counts;
  for (const auto& [n, k] : per_expert) counts.push_back(k);
  std::sort(counts.begin(), counts.end());
  const int64_t threshold = counts[counts.size() / 2];
  ASSERT_GT(threshold, counts.front()) << "the experts' counts should differ";
  PipelineOptions o;
  o.model_dir = model_;
  o.output_dir = tmp_.path() + "/threshold";
  o.scheme = *ParseScheme("W4A16g16");
  o.recipe = {{"gptq", {}}};
  o.calibration = DatasetRef{text_, "text", 24, 0};
  o.num_samples = 4;
  o.min_calibration_tokens = static_cast<int>(threshold);
  auto report = RunPipeline(o);
  QAAS_ASSERT_OK(report);
  int fell_back = 0;
  for (const auto& l : report->layers) {
    if (!per_expert.count(l.name)) continue;
    ASSERT_GE(l.calibration_tokens, 0) << l.name;
    const bool below = l.calibration_tokens < threshold;
    EXPECT_EQ(l.method, below ? "rtn" : "gptq") << l.name << " saw " << l.calibration_tokens;
    EXPECT_EQ(l.details.contains("fallback"), below) << l.name;
    fell_back += below;
  }
  EXPECT_GT(fell_back, 0);

  // all_tokens: every expert's statistics from every calibration token (no
  // fallback at that threshold), the float model's routing and outputs
  // unchanged (the original perplexity is the same).
  o.output_dir = tmp_.path() + "/all_tokens";
  o.expert_calibration = "all_tokens";
  o.evaluations = {DatasetRef{text_, "text", 24, 4}};
  auto all = RunPipeline(o);
  QAAS_ASSERT_OK(all);
  int experts = 0;
  for (const auto& l : all->layers) {
    if (!per_expert.count(l.name)) continue;
    EXPECT_EQ(l.calibration_tokens, tokens) << l.name;
    EXPECT_EQ(l.method, "gptq") << l.name;
    ++experts;
  }
  EXPECT_EQ(experts, c.num_layers * c.moe.num_experts);
  EXPECT_DOUBLE_EQ(all->evaluations[0].perplexity_original, gptq.evaluations[0].perplexity_original);

  o.min_calibration_tokens = 0;
  QAAS_EXPECT_CODE(RunPipeline(o), kInvalidArgument);
  o.min_calibration_tokens = 16;
  o.expert_calibration = "some";
  QAAS_EXPECT_CODE(RunPipeline(o), kInvalidArgument);
}

// SmoothQuant (W8A8, dynamic and static activations), OmniQuant's LWC + LET
// (W4A4) and W4A8KV4 run on mixtures of experts: the transforms fold into
// the router too (it is stored changed), static activation ranges cover every expert, and a layer's
// quantization reports each routed expert as it starts. RPTQ (one hidden
// reorder per expert) is refused by name.
TEST_P(MoePipelineTest, TransformsAndActivationQuantizationRun) {
  auto ck = Checkpoint::Open(model_);
  QAAS_ASSERT_OK(ck);
  const ModelConfig& c = (*ck)->config();
  const std::string router = "model.layers.0." + RouterName(c);
  auto input_router = (*ck)->Load(router, {c.moe.num_experts, c.hidden_size});
  QAAS_ASSERT_OK(input_router);
  for (const Job& job : std::vector<Job>{{"W8A8", {{"smoothquant", {}}, {"gptq", {}}}},
                                         {"W8A8_static", {{"smoothquant", {}}, {"rtn", {}}}},
                                         {"W4A4", {{"omniquant", {{"epochs", 2}}}}},
                                         {"W4A8KV4", {{"rtn", {}}}}}) {
    const std::string name = Name(job);
    SCOPED_TRACE(name);
    PipelineOptions o;
    o.model_dir = model_;
    o.output_dir = tmp_.path() + "/" + name;
    o.scheme = *ParseScheme(job.scheme);
    o.recipe = job.recipe;
    o.calibration = DatasetRef{text_, "text", 24, 0};
    o.block_errors = true;  // RTN's block errors are the baseline GPTQ's are compared with
    o.num_samples = 4;
    o.evaluations = {DatasetRef{text_, "text", 24, 4}};
    std::vector<std::pair<int, int>> experts_started;  // (layer, expert) as "quantizing" reports them
    o.on_progress = [&](const PipelineProgress& p) {
      if (p.num_experts == 0) return;
      EXPECT_EQ(p.step, "quantizing");
      EXPECT_EQ(p.num_experts, c.moe.num_experts);
      experts_started.emplace_back(p.layer, p.expert);
    };
    auto report = RunPipeline(o);
    ASSERT_TRUE(report.ok()) << GetParam() << " " << name << ": " << report.status();
    const double ppl = report->evaluations[0].perplexity_quantized;
    EXPECT_TRUE(std::isfinite(ppl) && ppl > 1) << ppl;
    std::printf("%-10s %-22s perplexity %.3f (float %.3f), block error %.4f\n", GetParam().c_str(), name.c_str(), ppl,
                report->evaluations[0].perplexity_original, BlockError(*report));
    // At 8 bits every block's output stays near the float block's (a router
    // folded wrongly would send tokens to other experts).
    if (o.scheme.weights.bits >= 8 && o.scheme.activations.bits >= 8) {
      for (const auto& b : report->blocks) EXPECT_LT(b.output_relative_error, 0.1) << "layer " << b.index;
    }
    const auto artifact = ReadAll(o.output_dir + "/artifact/model.safetensors");
    ASSERT_TRUE(artifact.count(router));
    const at::Tensor stored = RawToTensor(artifact.at(router)).to(at::kFloat);
    if (job.recipe.front().method == "rtn") {
      EXPECT_TRUE(stored.equal(*input_router)) << "no transform: the router as the input stores it";
    } else {
      EXPECT_FALSE(stored.equal(*input_router)) << "the transform's scales fold into the router";
      const auto& t = report->blocks[0].transforms;
      EXPECT_TRUE(t.contains(job.recipe.front().method)) << t;
    }
    if (o.scheme.activations.is_static_int()) {
      // One range per point for the layer, over every expert's routed tokens.
      const auto& ranges = report->blocks[0].transforms["static_activation_ranges"];
      ASSERT_TRUE(ranges.contains("mlp_hidden")) << ranges;
      EXPECT_LT(ranges["mlp_hidden"][0].get<double>(), ranges["mlp_hidden"][1].get<double>());
    }
    if (job.recipe.back().method == "gptq") {  // true-sequential: each expert reported once per layer, in order
      std::vector<std::pair<int, int>> expected;
      for (int i = 0; i < c.num_layers; ++i) {
        for (int e = 1; e <= c.moe.num_experts; ++e) expected.emplace_back(i, e);
      }
      EXPECT_EQ(experts_started, expected);
    }
  }
  auto refused = Run({"W4A4", {{"rptq", {}}, {"rtn", {}}}}, tmp_.path() + "/refused");
  QAAS_EXPECT_CODE(refused, kUnimplemented);
  EXPECT_TRUE(MessageHas(refused, "mixture-of-experts"));
}

INSTANTIATE_TEST_SUITE_P(Moe, MoePipelineTest, ::testing::Values("mixtral", "qwen2-moe", "qwen3-moe"));

INSTANTIATE_TEST_SUITE_P(Families, FamilyPipelineTest,
                         ::testing::Values("llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"));

}  // namespace
}  // namespace qaas::quant
