// Resume from per-layer checkpoints: a run stopped after some layers and
// resumed gives an artifact byte-identical to an uninterrupted run, for every
// method (each keeps different per-layer state: transforms, activation
// quantizers, per-IC layouts, learned clipping).
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/layer_state.h"
#include "quant/model/sentencepiece_model.h"
#include "quant/model/tokenizer.h"
#include "quant/pipeline.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

struct Case {
  std::string name;
  std::string scheme;
  std::vector<RecipeStep> recipe;
};

RecipeStep Step(const std::string& method) {
  RecipeStep s;
  s.method = method;
  if (method == "omniquant") s.Set("epochs", 2);
  if (method == "rptq") s.Set("clusters", std::vector<int>{2, 1, 1, 2, 2});
  return s;
}

std::vector<Case> Cases() {
  RecipeStep adadim = Step("adadim");
  adadim.Set("base", "gptq");
  return {{"rtn", "W4A16g32", {Step("rtn")}},
          {"gptq", "W4A16g32", {Step("gptq")}},
          {"adadim_gptq", "W3A16g32", {adadim}},
          {"smoothquant_gptq", "W8A8", {Step("smoothquant"), Step("gptq")}},
          {"rptq", "W4A8KV4", {Step("rptq"), Step("gptq")}},
          {"omniquant", "W4A4", {Step("omniquant")}},
          {"static_activations", "W8A8_static", {Step("smoothquant"), Step("rtn")}},
          {"mx", "Wmxfp4Amxfp8", {Step("gptq")}}};
}

class ResumeTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    text_ = dir_.path() + "/text.txt";
    std::string t;
    for (int i = 0; i < 40; ++i) t += kTinyText;
    WriteLocalFile(text_, t);
    // A zero-shot task, whose streams a resumed run replays too.
    tasks_ = dir_.path() + "/winogrande.jsonl";
    std::string docs;
    for (int i = 0; i < 6; ++i) {
      docs += nlohmann::json({{"sentence", "The small dog ran to the big _ and sat down."}, {"option1", "tree"},
                              {"option2", i % 2 ? "house" : "cat"}, {"answer", i % 2 ? "2" : "1"}})
                  .dump() +
              "\n";
    }
    WriteLocalFile(tasks_, docs);
  }

  PipelineOptions Options(const std::string& model, const std::string& out) {
    PipelineOptions o;
    o.model_dir = model;
    o.output_dir = out;
    o.scheme = MustParse(GetParam().scheme);
    o.recipe = GetParam().recipe;
    o.calibration = DatasetRef{text_, "text", 32, 0};
    o.num_samples = 8;
    o.seed = 7;
    o.evaluations = {DatasetRef{text_, "text", 64, 4}};
    o.tasks = {TaskRef{"winogrande", tasks_, "winogrande"}};
    o.task_max_length = 24;
    return o;
  }

  // Every file of out/artifact*/, by relative path.
  static std::map<std::string, std::string> Artifact(const std::string& out) {
    std::map<std::string, std::string> files;
    for (const char* sub : {"artifact", "artifact-dequantized"}) {
      const std::string dir = out + "/" + sub;
      if (!std::filesystem::exists(dir)) continue;
      for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
        if (e.is_regular_file()) files[std::string(sub) + "/" + e.path().filename().string()] = ReadLocalFile(e.path());
      }
    }
    return files;
  }

  // mid_layer: where the run reports experts (a mixture of experts whose
  // method calibrates expert by expert), the first run stops inside layer
  // stop_after, as its second expert starts, not between layers.
  void CheckResume(const std::string& model, int num_layers, bool mid_layer = false) {
    const std::string whole = dir_.path() + "/whole", parts = dir_.path() + "/parts";
    PipelineOptions whole_options = Options(model, whole);
    bool reports_experts = false;
    whole_options.on_progress = [&](const PipelineProgress& p) { reports_experts |= p.expert > 0; };
    auto full = RunPipeline(whole_options);
    ASSERT_TRUE(full.ok()) << full.status();
    EXPECT_EQ(full->resumed_layers, 0);
    EXPECT_FALSE(ToJson(*full).contains("resumed_layers"));

    // Stop after `stop_after` layers (a worker that died there), or inside
    // the next one.
    const int stop_after = num_layers / 2;
    const bool inside = mid_layer && reports_experts;
    stopped_inside_ = inside;
    PipelineOptions first = Options(model, parts);
    int done = 0, expert = 0;
    std::vector<int> saved;
    first.on_progress = [&](const PipelineProgress& p) {
      done += p.step == "layer done";
      if (p.layer == stop_after) expert = std::max(expert, p.expert);
    };
    first.should_stop = [&] { return inside ? expert >= 1 : done >= stop_after; };
    first.on_layer_saved = [&](int layer, const std::vector<std::string>& files) {
      saved.push_back(layer);
      for (const auto& f : files) EXPECT_TRUE(std::filesystem::exists(parts + "/" + f)) << f;
      EXPECT_EQ(files.back(), "checkpoints/state-" + std::to_string(layer) + ".safetensors");
      return absl::OkStatus();
    };
    auto stopped = RunPipeline(first);
    QAAS_EXPECT_CODE(stopped, kCancelled);
    if (inside) {
      EXPECT_NE(stopped.status().message().find(absl::StrCat("layer ", stop_after, " of ", num_layers, ", expert 2 of")),
                std::string::npos)
          << stopped.status();
    }
    EXPECT_EQ(saved.size(), static_cast<size_t>(stop_after));

    PipelineOptions second = Options(model, parts);
    second.resume = true;
    std::vector<std::string> steps;
    second.on_progress = [&](const PipelineProgress& p) { steps.push_back(p.step); };
    auto resumed = RunPipeline(second);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ(resumed->resumed_layers, stop_after);
    EXPECT_EQ(std::count(steps.begin(), steps.end(), "layer restored"), stop_after);
    EXPECT_EQ(std::count(steps.begin(), steps.end(), "layer done"), num_layers - stop_after);

    const auto a = Artifact(whole), b = Artifact(parts);
    ASSERT_FALSE(a.empty());
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, bytes] : a) {
      ASSERT_TRUE(b.count(name)) << name;
      EXPECT_TRUE(bytes == b.at(name)) << name << " differs after resume";
    }
    // The report carries the first run's per-layer entries and the same quality.
    EXPECT_EQ(resumed->layers.size(), full->layers.size());
    ASSERT_EQ(resumed->blocks.size(), full->blocks.size());
    for (size_t k = 0; k < full->blocks.size(); ++k) {  // all but timings
      EXPECT_EQ(resumed->blocks[k].output_relative_error, full->blocks[k].output_relative_error);
    }
    EXPECT_EQ(ToJson(*resumed)["evaluations"].dump(), ToJson(*full)["evaluations"].dump());
    EXPECT_EQ(ToJson(*resumed)["tasks"]["results"].dump(), ToJson(*full)["tasks"]["results"].dump());
  }

  ScopedTempDir dir_;
  std::string text_;
  std::string tasks_;
  bool stopped_inside_ = false;  // the last CheckResume stopped inside a layer
};

TEST_P(ResumeTest, TinyOptArtifactIsByteIdentical) { CheckResume(TinyOptDir(), 2); }

TEST_P(ResumeTest, Stories260kArtifactIsByteIdentical) {
  if (!std::filesystem::exists(Stories260kDir())) GTEST_SKIP() << "no ../shared: " << Stories260kDir();
  CheckResume(Stories260kDir(), 5);
}

// A mixture of experts (Qwen2-MoE: routed experts and a shared one),
// killed inside its second layer (after its first expert) where the method
// goes expert by expert, else after its first layer, for every recipe it
// runs (all but RPTQ's, whose channel reorder cannot cross a router: refused).
TEST_P(ResumeTest, MoeArtifactIsByteIdentical) {
  const Case& c = GetParam();
  if (c.recipe.front().method == "rptq") GTEST_SKIP() << "MoE refuses RPTQ";
  const std::string model = dir_.path() + "/moe";
  std::filesystem::copy(ReferencePath("families/qwen2-moe"), model, std::filesystem::copy_options::recursive);
  auto sp = TrainBpeModel(kTinyText, 320);
  QAAS_ASSERT_OK(sp);
  WriteLocalFile(model + "/tokenizer.model", SerializeSentencePieceModel(*sp));
  CheckResume(model, 2, /*mid_layer=*/true);
  // GPTQ calibrates expert by expert: its kill was inside the layer.
  if (c.name == "gptq" || c.name == "smoothquant_gptq") EXPECT_TRUE(stopped_inside_);
}

INSTANTIATE_TEST_SUITE_P(Methods, ResumeTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

// Checkpoints made from other inputs are not resumed from: the run starts
// over (and replaces them).
TEST(Resume, CheckpointsOfOtherInputsAreIgnored) {
  ScopedTempDir dir;
  const std::string text = dir.path() + "/text.txt";
  std::string t;
  for (int i = 0; i < 40; ++i) t += kTinyText;
  WriteLocalFile(text, t);
  PipelineOptions o;
  o.model_dir = TinyOptDir();
  o.output_dir = dir.path() + "/out";
  o.scheme = MustParse("W4A16g32");
  o.recipe = {Step("gptq")};
  o.calibration = DatasetRef{text, "text", 32, 0};
  o.num_samples = 8;
  o.seed = 1;
  ASSERT_TRUE(RunPipeline(o).ok());
  o.seed = 2;  // other calibration windows
  o.resume = true;
  auto again = RunPipeline(o);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->resumed_layers, 0);
  auto state = ReadLayerState(o.output_dir + "/checkpoints/state-0.safetensors");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->info["fingerprint"]["seed"].get<int>(), 2);
  // A state file that is not one fails to read with the reason.
  WriteLocalFile(dir.path() + "/junk.safetensors", "not a safetensors file");
  EXPECT_FALSE(ReadLayerState(dir.path() + "/junk.safetensors").ok());
}

TEST(Resume, LayerRecordRoundTripsAndMalformedOnesAreDataLoss) {
  LayerRecord r;
  r.fingerprint = {{"seed", 3}};
  r.layer = 2;
  r.linears = {{"model.layers.2.mlp.up_proj", "gptq", 0.5, 0.125, {{"damp", 0.01}}}};
  r.blocks = {{2, 0.25, {{"smoothquant", {{"scale_min", 0.5}}}}}};
  r.seconds_calibration = 1;
  r.seconds_quantization = 2;
  r.seconds_evaluation = 3;
  auto back = LayerRecordFromJson(ToJson(r));
  QAAS_ASSERT_OK(back);
  EXPECT_EQ(ToJson(*back), ToJson(r));
  EXPECT_EQ(back->linears[0].details["damp"], 0.01);
  EXPECT_EQ(back->seconds_evaluation, 3);
  nlohmann::json broken = ToJson(r);
  broken["layers"][0][2] = "fast";
  QAAS_EXPECT_CODE(LayerRecordFromJson(broken), kDataLoss);
  broken.erase("seconds");
  QAAS_EXPECT_CODE(LayerRecordFromJson(broken), kDataLoss);
}

// Only a run of complete layers counts; what follows a gap is removed.
TEST(Resume, ResumableLayersStopAtTheFirstGapAndRemoveTheRest) {
  ScopedTempDir dir;
  const std::string out = dir.path();
  std::filesystem::create_directories(out + "/checkpoints");
  const nlohmann::json fingerprint = {{"seed", 1}};
  DecoderLayer layer;
  layer.linears.push_back({at::ones({2, 2}), at::Tensor()});
  for (int i = 0; i < 4; ++i) {
    LayerRecord r;
    r.fingerprint = i == 2 ? nlohmann::json{{"seed", 9}} : fingerprint;  // layer 2: other inputs
    r.layer = i;
    QAAS_ASSERT_OK(WriteLayerState(out + "/" + CheckpointFile("state", i), layer, ToJson(r)));
    WriteLocalFile(out + "/" + CheckpointFile("layer", i), "packed");
  }
  std::filesystem::remove(out + "/" + CheckpointFile("layer", 1));  // layer 1's packed file lost
  EXPECT_EQ(ResumableLayers(out, 4, {"layer"}, fingerprint), 1);
  EXPECT_TRUE(std::filesystem::exists(out + "/" + CheckpointFile("state", 0)));
  for (int i = 1; i < 4; ++i) {
    EXPECT_FALSE(std::filesystem::exists(out + "/" + CheckpointFile("state", i))) << i;
    EXPECT_FALSE(std::filesystem::exists(out + "/" + CheckpointFile("layer", i))) << i;
  }
  // A stem the layer lacks (AdaDim's dequantized copy): nothing to resume.
  EXPECT_EQ(ResumableLayers(out, 4, {"layer", "dequantized-layer"}, fingerprint), 0);
}

}  // namespace
}  // namespace qaas::quant
