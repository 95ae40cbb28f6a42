// The compressed-tensors artifact: every format reads back to the weights
// the job evaluated, the config describes the scheme, the format is chosen
// and refused as documented, and large artifacts are sharded with an index.
#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/artifact_format.h"
#include "quant/export.h"
#include "quant/layer_state.h"
#include "quant/model/checkpoint.h"
#include "quant/model/safetensors.h"
#include "quant/pipeline.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"
#include "tests/quant/quant_test_util.h"
#include "tests/quant/random_model_fixture.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

const std::vector<std::string> kLinears = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj",     "mlp.up_proj",
                                           "mlp.down_proj"};

absl::StatusOr<std::map<std::string, RawTensor>> ReadArtifactTensors(const std::string& dir) {
  std::vector<std::string> files;
  if (FileExists(dir + "/model.safetensors.index.json")) {
    QAAS_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/model.safetensors.index.json"));
    std::set<std::string> unique;
    const nlohmann::json index = nlohmann::json::parse(text);
    for (const auto& entry : index.at("weight_map").items()) unique.insert(entry.value().get<std::string>());
    files.assign(unique.begin(), unique.end());
  } else {
    files = {"model.safetensors"};
  }
  std::map<std::string, RawTensor> out;
  for (const std::string& f : files) {
    QAAS_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir + "/" + f));
    QAAS_ASSIGN_OR_RETURN(auto all, file->ReadAll());
    for (auto& t : all) {
      if (out.count(t.name)) return absl::InternalError("tensor " + t.name + " in two shards");
      out[t.name] = std::move(t);
    }
  }
  return out;
}

struct CtCase {
  std::string scheme;
  std::vector<RecipeStep> recipe;
  std::string format;  // the group format written
  std::string dtype = "float32";  // of the model
};
void PrintTo(const CtCase& c, std::ostream* os) { *os << c.scheme << "/" << c.format << "/" << c.dtype; }

class CompressedTensorsRoundTripTest : public RandomModelPipelineTest,
                                       public ::testing::WithParamInterface<CtCase> {};

// Write, read our own export back: every quantized linear decodes to exactly
// the weight the job evaluated (so the codes and scales are the job's), and
// the config says what the layers hold.
TEST_P(CompressedTensorsRoundTripTest, EveryLinearReadsBackToTheEvaluatedWeights) {
  const CtCase c = GetParam();
  // Widths every group size here divides (the fixture's 172 has no such
  // groups: see RaggedGroupsAreRefusedOrLeftToGptq).
  RandomModelOptions m;
  m.tokenizer_text = kTinyText;
  m.seed = 3;
  m.intermediate_size = 192;
  m.dtype = c.dtype;
  QAAS_ASSERT_OK(WriteRandomLlama(m, model_dir()));
  PipelineOptions o = Options();
  o.scheme = MustParse(c.scheme);
  o.recipe = c.recipe;
  o.num_samples = 4;
  auto format = ResolveArtifactFormat("compressed-tensors", o.scheme, o.recipe);
  QAAS_ASSERT_OK(format);
  o.artifact_layout = *format;
  QAAS_ASSERT_OK(RunPipeline(o));
  const std::string artifact = o.output_dir + "/artifact";
  auto config_text = ReadFile(artifact + "/config.json");
  QAAS_ASSERT_OK(config_text);
  const nlohmann::json config = nlohmann::json::parse(*config_text);
  const nlohmann::json& qc = config.at("quantization_config");
  EXPECT_EQ(qc.at("quant_method"), "compressed-tensors");
  EXPECT_EQ(qc.at("quantization_status"), "compressed");
  EXPECT_EQ(qc.at("format"), c.format);
  const nlohmann::json& group = qc.at("config_groups").at("group_0");
  EXPECT_EQ(group.at("format"), c.format);
  EXPECT_EQ(group.at("targets"), nlohmann::json::array({"Linear"}));
  EXPECT_EQ(qc.at("ignore"), nlohmann::json::array({"lm_head"}));
  EXPECT_EQ(group.at("input_activations").is_null(), !o.scheme.activations.enabled());
  EXPECT_EQ(qc.at("kv_cache_scheme").is_null(), !o.scheme.kv_cache.enabled());
  if (o.scheme.kv_cache.enabled() && !o.scheme.kv_cache.is_mx()) {
    EXPECT_EQ(qc.at("kv_cache_scheme").at("group_size"), 16);  // head_dim: 64 / 4 heads
    EXPECT_EQ(qc.at("kv_cache_scheme").at("num_bits"), o.scheme.kv_cache.bits);
  }
  auto manifest = ReadFile(artifact + "/qaas_manifest.json");
  QAAS_ASSERT_OK(manifest);
  EXPECT_EQ(nlohmann::json::parse(*manifest).at("format"), "compressed-tensors");

  auto tensors = ReadArtifactTensors(artifact);
  QAAS_ASSERT_OK(tensors);
  int checked = 0;
  for (int i = 0; i < 2; ++i) {
    auto state = ReadLayerState(o.output_dir + "/" + CheckpointFile("state", i));
    QAAS_ASSERT_OK(state);
    for (size_t j = 0; j < kLinears.size(); ++j) {
      const std::string prefix = "model.layers." + std::to_string(i) + "." + kLinears[j];
      SCOPED_TRACE(prefix);
      const at::Tensor& evaluated = state->layer.linears[j].weight;
      auto back = ReadCompressedTensorsLinear(*tensors, prefix, qc, evaluated.size(0), evaluated.size(1));
      QAAS_ASSERT_OK(back);
      EXPECT_TRUE(back->weight.equal(evaluated))
          << "max diff " << (back->weight - evaluated).abs().max().item<float>();
      // Scales in the model dtype, as the loaders compute with them.
      if (!o.scheme.weights.is_mx()) {
        EXPECT_EQ(tensors->at(prefix + ".weight_scale").dtype, c.dtype == "bfloat16" ? DType::kBF16 : DType::kF32);
      }
      if (o.scheme.weights.format == NumberFormat::kInt) {
        const int bits = o.scheme.weights.bits;
        EXPECT_GE(back->codes.min().item<int>(), 0);
        EXPECT_LT(back->codes.max().item<int>(), 1 << bits);
        EXPECT_GE(back->zero.min().item<float>(), 0);
        EXPECT_LT(back->zero.max().item<float>(), 1 << bits);
      }
      // Static activations: each linear carries its input point's scale.
      const bool static_acts = o.scheme.activations.is_static_int();
      EXPECT_EQ(tensors->count(prefix + ".input_scale"), static_acts ? 1u : 0u);
      if (static_acts) {
        const at::Tensor stored = RawToTensor(tensors->at(prefix + ".input_scale"));
        EXPECT_EQ(stored.sizes().vec(), std::vector<int64_t>{1});
        ASSERT_TRUE(state->layer.act);
        const int point = j < 3 ? 0 : j == 3 ? 1 : j < 6 ? 2 : 3;
        EXPECT_TRUE(stored.equal(state->layer.act->inputs[point].scale.reshape({1}).cpu()));
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 14);
  // What a reader is given wrong is named.
  const std::string p0 = "model.layers.0.self_attn.q_proj";
  auto broken = *tensors;
  const std::string key = c.format == "pack-quantized" || c.format == "mxfp4-pack-quantized" ? ".weight_packed"
                                                                                           : ".weight";
  broken.erase(p0 + key);
  auto missing = ReadCompressedTensorsLinear(broken, p0, qc, 64, 64);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MessageHas(missing.status(), p0 + key)) << missing.status();
}

RecipeStep GptqStatic() { return {"gptq", {{"act_order", true}, {"static_groups", true}}}; }

INSTANTIATE_TEST_SUITE_P(
    Formats, CompressedTensorsRoundTripTest,
    ::testing::Values(CtCase{"W4A16g16", {{"rtn", {}}}, "pack-quantized"},
                      CtCase{"W4A16g32_sym", {GptqStatic()}, "pack-quantized"},
                      CtCase{"W3A16g16", {{"gptq", {}}}, "pack-quantized"},
                      CtCase{"W8A16", {{"rtn", {}}}, "pack-quantized"},
                      CtCase{"W4A16g16KV4", {{"rtn", {}}}, "pack-quantized"},
                      CtCase{"W8A8_sym", {{"smoothquant", {}}, {"gptq", {}}}, "int-quantized"},
                      CtCase{"W8A8_sym_static", {{"smoothquant", {}}, {"rtn", {}}}, "int-quantized"},
                      CtCase{"Wmxfp4", {{"rtn", {}}}, "mxfp4-pack-quantized"},
                      CtCase{"Wmxfp4Amxfp4", {{"gptq", {}}}, "mxfp4-pack-quantized"},
                      CtCase{"Wmxfp8Amxfp8", {{"rtn", {}}}, "mxfp8-quantized"},
                      CtCase{"Wfp8", {{"rtn", {}}}, "float-quantized"},
                      CtCase{"Wfp8Afp8", {{"smoothquant", {}}, {"rtn", {}}}, "float-quantized"},
                      CtCase{"Wfp8Afp8", {{"rtn", {}}}, "float-quantized", "bfloat16"},
                      // A bfloat16 model's scales are bfloat16 and still decode exactly.
                      CtCase{"W4A16g16", {{"gptq", {}}}, "pack-quantized", "bfloat16"},
                      CtCase{"W8A8_sym_static", {{"smoothquant", {}}, {"gptq", {}}}, "int-quantized", "bfloat16"}));

TEST(ArtifactFormatTest, AutoPicksTheBestFormatForTheScheme) {
  const std::vector<RecipeStep> rtn = {{"rtn", {}}};
  auto resolve = [](const std::string& f, const std::string& scheme, const std::vector<RecipeStep>& r) {
    auto got = ResolveArtifactFormat(f, MustParse(scheme), r);
    return got.ok() ? *got : std::string(got.status().message());
  };
  for (const char* f : {"auto", ""}) {
    EXPECT_EQ(resolve(f, "W4A16g128", rtn), "gptq");
    EXPECT_EQ(resolve(f, "W3A16g128_sym", rtn), "gptq");
    EXPECT_EQ(resolve(f, "W8A8_sym", rtn), "compressed-tensors");
    EXPECT_EQ(resolve(f, "W8A8_sym_static", rtn), "compressed-tensors");
    EXPECT_EQ(resolve(f, "Wmxfp4", rtn), "compressed-tensors");
    EXPECT_EQ(resolve(f, "Wmxfp4Amxfp4", rtn), "compressed-tensors");
    EXPECT_EQ(resolve(f, "W4A16g128KV4", rtn), "compressed-tensors");
    EXPECT_EQ(resolve(f, "Wfp8Afp8", rtn), "compressed-tensors");
    EXPECT_EQ(resolve(f, "Wfp8", rtn), "compressed-tensors");
    // What compressed-tensors cannot store falls back to the GPTQ layout.
    EXPECT_EQ(resolve(f, "W8A8", rtn), "gptq");  // asymmetric weights
    EXPECT_EQ(resolve(f, "W4A4", {{"rptq", {}}, {"rtn", {}}}), "gptq");
    EXPECT_EQ(resolve(f, "Wmxint4", rtn), "gptq");
  }
  EXPECT_EQ(resolve("gptq", "W8A8_sym", rtn), "gptq");
}

TEST(ArtifactFormatTest, WhatCompressedTensorsCannotStoreIsRefusedSayingWhy) {
  auto refused = [](const std::string& scheme, const std::vector<RecipeStep>& recipe, const std::string& why) {
    auto got = ResolveArtifactFormat("compressed-tensors", MustParse(scheme), recipe);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << scheme;
    EXPECT_TRUE(MessageHas(got.status(), why)) << got.status();
    EXPECT_TRUE(MessageHas(got.status(), MustParse(scheme).ToString())) << got.status();
  };
  refused("W4A4", {{"rptq", {}}, {"rtn", {}}}, "RPTQ");
  refused("W4A16g128", {{"adadim", {}}}, "per-input-channel");
  refused("W4A16g128", {{"gptq", {{"act_order", true}}}}, "g_idx");
  refused("W8A8", {{"rtn", {}}}, "symmetric 8-bit weights per channel");
  refused("W8A8g128_sym", {{"rtn", {}}}, "per channel");
  refused("W4A8", {{"rtn", {}}}, "int8 kernels");
  refused("Wmxint4", {{"rtn", {}}}, "MXFP4");
  refused("Wmxfp6", {{"rtn", {}}}, "MXFP4");
  refused("Wmxfp4A8", {{"rtn", {}}}, "MX weights go with");
  refused("W16A8", {{"rtn", {}}}, "keeps them float");
  refused("Wfp8Afp8e5m2", {{"rtn", {}}}, "FP8 (E4M3) activations per token");
  refused("Wfp8A8", {{"rtn", {}}}, "FP8 (E4M3) activations per token");
  auto gptq_fp8 = ResolveArtifactFormat("gptq", MustParse("Wfp8Afp8"), {{"rtn", {}}});
  EXPECT_EQ(gptq_fp8.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MessageHas(gptq_fp8.status(), "compressed-tensors")) << gptq_fp8.status();
  // FP8 weights have no GPTQ form to fall back to: auto says why.
  auto auto_fp8 = ResolveArtifactFormat("auto", MustParse("Wfp8Afp8e5m2"), {{"rtn", {}}});
  EXPECT_EQ(auto_fp8.status().code(), absl::StatusCode::kInvalidArgument);
  auto unknown = ResolveArtifactFormat("awq", MustParse("W4A16g128"), {{"rtn", {}}});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MessageHas(unknown.status(), "'awq'"));
  EXPECT_TRUE(MessageHas(unknown.status(), "compressed-tensors"));
}

// stories260k-like widths (intermediate 172): no group of 16 or MX block
// divides the down projection's input, which the format cannot store.
TEST_F(RandomModelPipelineTest, RaggedGroupsAreRefusedOrLeftToGptq) {
  for (const char* scheme : {"W4A16g16KV4", "Wmxfp4"}) {
    SCOPED_TRACE(scheme);
    PipelineOptions o = Options();
    o.output_dir = dir_.path() + "/out-" + scheme;
    o.scheme = MustParse(scheme);
    o.artifact_layout = "compressed-tensors";
    auto refused = RunPipeline(o);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(MessageHas(refused.status(), "172 input features")) << refused.status();
    EXPECT_FALSE(FileExists(o.output_dir + "/checkpoints/state-0.safetensors"));  // refused before any work
    o.artifact_layout = "auto";
    QAAS_ASSERT_OK(RunPipeline(o));
    auto manifest = ReadFile(o.output_dir + "/artifact/qaas_manifest.json");
    QAAS_ASSERT_OK(manifest);
    EXPECT_NE(nlohmann::json::parse(*manifest).at("format"), "compressed-tensors");
  }
  EXPECT_EQ(*ResolveArtifactFormat("auto", MustParse("Wmxfp4"), {{"rtn", {}}}, {64, 172}), "gptq");
  EXPECT_EQ(*ResolveArtifactFormat("auto", MustParse("Wmxfp4"), {{"rtn", {}}}, {64, 192}), "compressed-tensors");
  ModelConfig moe;
  moe.hidden_size = 64;
  moe.num_heads = 4;
  moe.head_dim = 16;
  moe.intermediate_size = 80;  // a mixture of experts' dense size feeds no linear
  moe.moe.num_experts = 4;
  moe.moe.expert_intermediate_size = 96;
  EXPECT_EQ(LinearInputWidths(moe), (std::vector<int64_t>{64, 64, 96}));
}

TEST(ArtifactShardsTest, TensorsFillShardsInOrderAndLargeOnesGoAlone) {
  EXPECT_EQ(AssignShards({5, 5, 5, 20, 1}, 10), (std::vector<std::vector<int>>{{0, 1}, {2}, {3}, {4}}));
  EXPECT_EQ(AssignShards({3, 3, 3}, 100), (std::vector<std::vector<int>>{{0, 1, 2}}));
  EXPECT_EQ(ShardFileName(0, 1), "model.safetensors");
  EXPECT_EQ(ShardFileName(1, 3), "model-00002-of-00003.safetensors");
}

// Above max_shard_bytes the weights go to shards with Transformers' index;
// the tensors are those of the one-file artifact, byte for byte, and a
// weights file another run left in the directory is gone.
TEST_F(RandomModelPipelineTest, LargeArtifactsAreShardedWithAnIndex) {
  PipelineOptions one = Options();
  one.artifact_layout = "compressed-tensors";
  one.scheme = MustParse("W8A8_sym");
  QAAS_ASSERT_OK(RunPipeline(one));
  auto single = ReadArtifactTensors(one.output_dir + "/artifact");
  QAAS_ASSERT_OK(single);

  PipelineOptions sharded = one;
  sharded.output_dir = dir_.path() + "/sharded";
  sharded.max_shard_bytes = 40000;
  QAAS_ASSERT_OK(MakeDirs(sharded.output_dir + "/artifact"));
  ::qaas::testing::WriteLocalFile(sharded.output_dir + "/artifact/model.safetensors", "stale");
  QAAS_ASSERT_OK(RunPipeline(sharded));
  const std::string dir = sharded.output_dir + "/artifact";
  EXPECT_FALSE(FileExists(dir + "/model.safetensors"));
  auto index_text = ReadFile(dir + "/model.safetensors.index.json");
  QAAS_ASSERT_OK(index_text);
  const nlohmann::json index = nlohmann::json::parse(*index_text);
  std::set<std::string> files;
  for (const auto& [name, file] : index.at("weight_map").items()) files.insert(file.get<std::string>());
  EXPECT_GE(files.size(), 3u);
  uint64_t total = 0;
  for (const std::string& f : files) {
    EXPECT_TRUE(absl::EndsWith(f, absl::StrCat("-of-0000", files.size(), ".safetensors"))) << f;
    auto file = SafetensorsFile::Open(dir + "/" + f);
    QAAS_ASSERT_OK(file);
    uint64_t bytes = 0;
    for (const auto& [name, e] : (*file)->header().tensors) {
      bytes += e.end - e.begin;
      EXPECT_EQ(index.at("weight_map").at(name), f) << name;
    }
    // Only a tensor larger than the limit has a shard to itself above it.
    if ((*file)->header().tensors.size() > 1) EXPECT_LE(bytes, sharded.max_shard_bytes) << f;
    total += bytes;
  }
  EXPECT_EQ(index.at("metadata").at("total_size").get<uint64_t>(), total);
  auto tensors = ReadArtifactTensors(dir);
  QAAS_ASSERT_OK(tensors);
  ASSERT_EQ(tensors->size(), single->size());
  EXPECT_EQ(index.at("weight_map").size(), single->size());
  for (const auto& [name, t] : *single) {
    ASSERT_TRUE(tensors->count(name)) << name;
    EXPECT_EQ(tensors->at(name).data, t.data) << name;
    EXPECT_EQ(tensors->at(name).shape, t.shape) << name;
  }
}

}  // namespace
}  // namespace qaas::quant

namespace qaas::quant {
namespace {

// A mixture of experts: every expert's linears are stored compressed and
// read back; the routers stay float and `ignore` names them.
TEST_F(RandomModelPipelineTest, MixtureOfExpertsKeepsItsRoutersFloatAndIgnored) {
  RandomModelOptions m;
  m.tokenizer_text = kTinyText;
  m.seed = 5;
  m.intermediate_size = 96;
  m.num_experts = 4;
  QAAS_ASSERT_OK(WriteRandomLlama(m, model_dir()));
  PipelineOptions o = Options();
  o.scheme = MustParse("W4A16g32");
  o.artifact_layout = "compressed-tensors";
  o.min_calibration_tokens = 1;
  QAAS_ASSERT_OK(RunPipeline(o));
  auto config_text = ReadFile(o.output_dir + "/artifact/config.json");
  QAAS_ASSERT_OK(config_text);
  const nlohmann::json qc = nlohmann::json::parse(*config_text).at("quantization_config");
  EXPECT_EQ(qc.at("ignore"), nlohmann::json::array({"lm_head", "re:.*\\.gate$", "re:.*shared_expert_gate$"}));
  auto tensors = ReadArtifactTensors(o.output_dir + "/artifact");
  QAAS_ASSERT_OK(tensors);
  auto original = Checkpoint::Open(model_dir());
  QAAS_ASSERT_OK(original);
  int packed = 0;
  for (const auto& [name, t] : *tensors) {
    if (!absl::EndsWith(name, ".weight_packed")) continue;
    const std::string prefix = name.substr(0, name.size() - std::string(".weight_packed").size());
    const at::Tensor shape = RawToTensor(tensors->at(prefix + ".weight_shape"));
    auto back = ReadCompressedTensorsLinear(*tensors, prefix, qc, shape[0].item<int64_t>(), shape[1].item<int64_t>());
    QAAS_EXPECT_OK(back);
    ++packed;
  }
  EXPECT_EQ(packed, 2 * (4 + 3 * 4));  // per layer: q/k/v/o and each expert's w1/w3/w2
  for (int i = 0; i < 2; ++i) {
    const std::string router = "model.layers." + std::to_string(i) + ".block_sparse_moe.gate.weight";
    ASSERT_TRUE(tensors->count(router)) << router;
    auto stored = (*original)->LoadRaw(router);
    QAAS_ASSERT_OK(stored);
    EXPECT_EQ(tensors->at(router).data, stored->data) << router;
  }
}

}  // namespace
}  // namespace qaas::quant
