#include "server/spec_validation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>

#include "proto/recipe_convert.h"
#include "quant/method_table.h"
#include "tests/test_util.h"

namespace qaas::server {
namespace {

using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

class SpecValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.path() + "/root";
    std::filesystem::create_directories(root_ + "/model");
    WriteLocalFile(root_ + "/model/config.json", ::qaas::testing::kTestModelConfig);
    WriteLocalFile(root_ + "/calib.txt", "text");
    options_.file_roots = {root_};
    spec_.set_model("file://" + root_ + "/model");
    spec_.set_preset("rtn");
    spec_.mutable_scheme()->set_shorthand("W4A16g128");
  }
  absl::Status Validate() { return ValidateJobSpec(options_, &spec_); }
  // Validation writes the normalized structured fields back; a new shorthand replaces them.
  void SetScheme(const std::string& shorthand) {
    spec_.clear_scheme();
    spec_.mutable_scheme()->set_shorthand(shorthand);
  }

  ScopedTempDir dir_;
  std::string root_;
  ValidationOptions options_;
  v1::JobSpec spec_;
};

TEST_F(SpecValidationTest, FillsDefaults) {
  QAAS_ASSERT_OK(Validate());
  ASSERT_EQ(spec_.recipe_size(), 1);
  EXPECT_EQ(spec_.recipe(0).method(), "rtn");
  EXPECT_EQ(spec_.calibration().num_samples(), 128);
  EXPECT_EQ(spec_.scheme().weights().bits(), 4);
  EXPECT_EQ(spec_.scheme().weights().group_size(), 128);
  EXPECT_EQ(spec_.scheme().shorthand(), "W4A16g128");
  EXPECT_EQ(spec_.calibration().expert_calibration(), "routed");
  EXPECT_EQ(spec_.calibration().min_calibration_tokens(), 16);
}

TEST_F(SpecValidationTest, ExpertCalibrationOptionsAreChecked) {
  spec_.mutable_calibration()->set_expert_calibration("all_tokens");
  spec_.mutable_calibration()->set_min_calibration_tokens(64);
  QAAS_ASSERT_OK(Validate());
  EXPECT_EQ(spec_.calibration().expert_calibration(), "all_tokens");
  EXPECT_EQ(spec_.calibration().min_calibration_tokens(), 64);
  spec_.mutable_calibration()->set_expert_calibration("everything");
  absl::Status st = Validate();
  QAAS_EXPECT_CODE(st, kInvalidArgument);
  EXPECT_NE(st.message().find("calibration.expert_calibration"), absl::string_view::npos) << st;
  EXPECT_NE(st.message().find("everything"), absl::string_view::npos) << st;
  spec_.mutable_calibration()->set_expert_calibration("routed");
  spec_.mutable_calibration()->set_min_calibration_tokens(-3);
  st = Validate();
  QAAS_EXPECT_CODE(st, kInvalidArgument);
  EXPECT_NE(st.message().find("calibration.min_calibration_tokens"), absl::string_view::npos) << st;
}

TEST_F(SpecValidationTest, UnknownSchemeTokenIsNamed) {
  spec_.mutable_scheme()->set_shorthand("W4A16q7");
  absl::Status st = Validate();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("q7"), absl::string_view::npos) << st;
}

TEST_F(SpecValidationTest, StructuredSchemeWorksAndMustAgreeWithShorthand) {
  spec_.mutable_scheme()->clear_shorthand();
  spec_.mutable_scheme()->mutable_weights()->set_format(v1::NUMBER_FORMAT_INT);
  spec_.mutable_scheme()->mutable_weights()->set_bits(3);
  QAAS_ASSERT_OK(Validate());
  EXPECT_EQ(spec_.scheme().shorthand(), "W3A16");
  spec_.mutable_scheme()->set_shorthand("W4A16");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

TEST_F(SpecValidationTest, OmniQuantOptionsAndSchemesAreChecked) {
  spec_.clear_preset();
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/calib.txt");
  auto* step = spec_.add_recipe();
  step->set_method("omniquant");
  step->mutable_omniquant()->set_epochs(5);
  step->mutable_omniquant()->set_lwc_lr(0.02);
  QAAS_ASSERT_OK(Validate());
  SetScheme("W4A4KV4");
  QAAS_ASSERT_OK(Validate());

  step->mutable_omniquant()->set_epochs(-1);
  absl::Status st = Validate();
  QAAS_EXPECT_CODE(st, kInvalidArgument);
  EXPECT_NE(st.message().find("omniquant.epochs"), absl::string_view::npos) << st;
  step->mutable_omniquant()->set_epochs(0);
  step->mutable_omniquant()->set_let_lr(5);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  step->mutable_omniquant()->set_let_lr(0);

  // LWC learns integer ranges; training needs dynamic activations; RPTQ's
  // reorder and LET's scales do not mix.
  for (const char* scheme : {"Wmxint4A16", "W8A8_static"}) {
    SetScheme(scheme);
    st = Validate();
    QAAS_EXPECT_CODE(st, kInvalidArgument);
    EXPECT_NE(st.message().find("omniquant"), absl::string_view::npos) << st;
  }
  SetScheme("W4A8");
  spec_.clear_recipe();
  spec_.add_recipe()->set_method("rptq");
  spec_.add_recipe()->set_method("omniquant");
  st = Validate();
  QAAS_EXPECT_CODE(st, kInvalidArgument);
  EXPECT_NE(st.message().find("rptq"), absl::string_view::npos) << st;
  // Without calibration data it cannot learn.
  spec_.clear_recipe();
  spec_.add_recipe()->set_method("omniquant");
  spec_.mutable_calibration()->clear_dataset();
  st = Validate();
  QAAS_EXPECT_CODE(st, kInvalidArgument);
  EXPECT_NE(st.message().find("calibration.dataset"), absl::string_view::npos) << st;
}

TEST_F(SpecValidationTest, UnimplementedMethodsAndFormatsAreNamed) {
  spec_.clear_preset();
  spec_.add_recipe()->set_method("magic");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  EXPECT_NE(Validate().message().find("recipe[0]: unknown method 'magic' (known: rtn, gptq"), absl::string_view::npos)
      << Validate();

  spec_.mutable_recipe(0)->set_method("rtn");
  SetScheme("Wfp8e5m2A16");
  absl::Status st = Validate();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("FP8 E5M2 weights"), absl::string_view::npos) << st;
  for (const char* ok : {"W4A8", "W4A4KV4", "Wmxfp4Amxfp4", "Wmxint4Amxint8", "W8A8KVfp8", "Wfp8Afp8"}) {
    SetScheme(ok);
    spec_.mutable_artifact()->clear_format();  // each scheme's own choice (validation stores the resolved one)
    QAAS_EXPECT_OK(Validate());
  }
}

TEST_F(SpecValidationTest, MxElementVariantsSurviveTheProto) {
  SetScheme("Wmxfp6e2m3Amxfp8e5m2");
  QAAS_ASSERT_OK(Validate());
  EXPECT_EQ(spec_.scheme().weights().format(), v1::NUMBER_FORMAT_MXFP);
  EXPECT_EQ(spec_.scheme().weights().exponent_bits(), 2);
  EXPECT_EQ(spec_.scheme().activations().exponent_bits(), 5);
  // The structured form alone means the same; a disagreeing shorthand is refused.
  spec_.mutable_scheme()->clear_shorthand();
  QAAS_EXPECT_OK(Validate());
  spec_.mutable_scheme()->set_shorthand("Wmxfp6Amxfp8e5m2");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

TEST_F(SpecValidationTest, TransformRecipesAreChecked) {
  spec_.clear_preset();
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/calib.txt");
  SetScheme("W4A8");
  spec_.add_recipe()->set_method("smoothquant");
  spec_.add_recipe()->set_method("gptq");
  QAAS_EXPECT_OK(Validate());

  // Transforms calibrate: no calibration data, no job.
  const std::string dataset = spec_.calibration().dataset();
  spec_.mutable_calibration()->clear_dataset();
  absl::Status st = Validate();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("calibration.dataset"), absl::string_view::npos) << st;
  spec_.mutable_calibration()->set_dataset(dataset);

  spec_.mutable_recipe(0)->mutable_smoothquant()->set_alpha(1.5);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  spec_.mutable_recipe(0)->mutable_smoothquant()->set_alpha(0.8);
  QAAS_EXPECT_OK(Validate());

  // A transform after the weight quantizer, two weight quantizers.
  spec_.mutable_recipe()->SwapElements(0, 1);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  spec_.mutable_recipe(1)->set_method("rtn");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);

  // RPTQ: integer activations, five cluster counts.
  spec_.clear_recipe();
  spec_.add_recipe()->set_method("rptq");
  SetScheme("W4A4KV4");
  QAAS_EXPECT_OK(Validate());
  SetScheme("Wmxfp4Amxfp4");
  st = Validate();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("integer activations"), absl::string_view::npos) << st;
  SetScheme("W4A4");
  spec_.mutable_recipe(0)->mutable_rptq()->add_clusters(8);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);

  // Static activation scales are calibrated.
  spec_.clear_recipe();
  spec_.add_recipe()->set_method("rtn");
  SetScheme("W8A8_static");
  QAAS_EXPECT_OK(Validate());
  spec_.mutable_calibration()->clear_dataset();
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

TEST_F(SpecValidationTest, OptionsMustMatchTheMethod) {
  spec_.clear_preset();
  auto* step = spec_.add_recipe();
  step->set_method("rtn");
  step->mutable_gptq()->set_damp(0.1);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

// job.proto's options messages are the method table's rows: one oneof field
// per method, named like it, with one field per option of the same name.
TEST(RecipeConvertTest, JobProtoMatchesTheMethodTable) {
  const auto* oneof = v1::RecipeStep::descriptor()->FindOneofByName("options");
  ASSERT_NE(oneof, nullptr);
  EXPECT_EQ(oneof->field_count(), static_cast<int>(quant::Methods().size()));
  for (int i = 0; i < oneof->field_count(); ++i) {
    EXPECT_NE(quant::FindMethod(oneof->field(i)->name()), nullptr) << oneof->field(i)->name();
  }
  for (const quant::MethodSpec& m : quant::Methods()) {
    SCOPED_TRACE(m.name);
    const auto* field = v1::RecipeStep::descriptor()->FindFieldByName(m.name);
    ASSERT_NE(field, nullptr);
    EXPECT_EQ(field->containing_oneof(), oneof);
    EXPECT_EQ(field->message_type()->field_count(), static_cast<int>(m.options.size()));
    // Every option set through the proto comes back (and every field of the
    // message is an option: RecipeStepFromProto says Internal otherwise).
    quant::RecipeStep step{m.name, {}};
    for (const quant::OptionSpec& o : m.options) {
      switch (o.type) {
        case quant::OptionType::kDouble: step.Set(o.name, o.max); break;
        case quant::OptionType::kInt: step.Set(o.name, static_cast<int>(o.max)); break;
        case quant::OptionType::kBool: step.Set(o.name, true); break;
        case quant::OptionType::kChoice: step.Set(o.name, o.choices.back()); break;
        case quant::OptionType::kIntList: step.Set(o.name, std::vector<int>(o.length, static_cast<int>(o.max))); break;
      }
    }
    auto proto = RecipeStepToProto(step);
    ASSERT_TRUE(proto.ok()) << proto.status();
    auto back = RecipeStepFromProto(*proto, "recipe[0]");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, step);
    // Unset fields are the table's defaults.
    auto plain = RecipeStepFromProto(v1::RecipeStep(), "recipe[0]");
    ASSERT_TRUE(plain.ok());
    EXPECT_TRUE(plain->options.empty());
  }
}

// What qaasctl sends for every option of the table (at its bound) validates.
TEST_F(SpecValidationTest, EveryOptionOfTheTableValidates) {
  spec_.clear_preset();
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/calib.txt");
  SetScheme("W4A8");
  for (const quant::MethodSpec& m : quant::Methods()) {
    for (const quant::OptionSpec& o : m.options) {
      SCOPED_TRACE(m.name + "." + o.name);
      quant::RecipeStep step{m.name, {}};
      if (o.type == quant::OptionType::kBool) step.Set(o.name, true);
      if (o.type == quant::OptionType::kChoice) step.Set(o.name, o.choices.back());
      if (o.type == quant::OptionType::kDouble) step.Set(o.name, o.max);
      if (o.type == quant::OptionType::kInt) step.Set(o.name, static_cast<int>(o.max));
      if (o.type == quant::OptionType::kIntList) step.Set(o.name, std::vector<int>(o.length, static_cast<int>(o.max)));
      auto proto = RecipeStepToProto(step);
      ASSERT_TRUE(proto.ok()) << proto.status();
      spec_.clear_recipe();
      *spec_.add_recipe() = *proto;
      QAAS_EXPECT_OK(Validate());
    }
  }
}

TEST_F(SpecValidationTest, OutOfBoundsOptionsAreRefusedNamingTheField) {
  spec_.clear_preset();
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/calib.txt");
  SetScheme("W4A8");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    std::string method, field;
    std::function<void(v1::RecipeStep*)> set;
  };
  const std::vector<Case> cases = {
      {"gptq", "recipe[0].gptq.damp", [&](v1::RecipeStep* s) { s->mutable_gptq()->set_damp(nan); }},
      {"gptq", "recipe[0].gptq.damp", [](v1::RecipeStep* s) { s->mutable_gptq()->set_damp(-0.5); }},
      {"gptq", "recipe[0].gptq.damp", [](v1::RecipeStep* s) { s->mutable_gptq()->set_damp(2); }},
      {"gptq", "recipe[0].gptq.block_size", [](v1::RecipeStep* s) { s->mutable_gptq()->set_block_size(-1); }},
      {"adadim", "recipe[0].adadim.base", [](v1::RecipeStep* s) { s->mutable_adadim()->set_base("omniquant"); }},
      {"adadim", "recipe[0].adadim.damp", [](v1::RecipeStep* s) { s->mutable_adadim()->set_damp(3); }},
      {"smoothquant", "recipe[0].smoothquant.alpha", [&](v1::RecipeStep* s) { s->mutable_smoothquant()->set_alpha(nan); }},
      {"rptq", "recipe[0].rptq.clusters", [](v1::RecipeStep* s) { s->mutable_rptq()->add_clusters(8); }},
      {"rptq", "recipe[0].rptq.clusters",
       [](v1::RecipeStep* s) {
         for (int c : {8, 4, 4, 8, 65537}) s->mutable_rptq()->add_clusters(c);
       }},
      {"omniquant", "recipe[0].omniquant.epochs", [](v1::RecipeStep* s) { s->mutable_omniquant()->set_epochs(1001); }},
      {"omniquant", "recipe[0].omniquant.lwc_lr", [](v1::RecipeStep* s) { s->mutable_omniquant()->set_lwc_lr(-1); }},
      {"omniquant", "recipe[0].omniquant.let_lr", [&](v1::RecipeStep* s) { s->mutable_omniquant()->set_let_lr(nan); }},
  };
  for (const Case& c : cases) {
    spec_.clear_recipe();
    auto* step = spec_.add_recipe();
    step->set_method(c.method);
    c.set(step);
    absl::Status st = Validate();
    QAAS_EXPECT_CODE(st, kInvalidArgument);
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos) << st;
  }
}

// Presets come from the table's rows and validate as they expand.
TEST_F(SpecValidationTest, EveryPresetOfTheTableValidates) {
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/calib.txt");
  SetScheme("W4A8");
  for (const quant::Preset* preset : quant::Presets()) {
    SCOPED_TRACE(preset->name);
    spec_.clear_recipe();
    spec_.set_preset(preset->name);
    QAAS_ASSERT_OK(Validate());
    ASSERT_EQ(spec_.recipe_size(), static_cast<int>(preset->steps.size()));
    for (int i = 0; i < spec_.recipe_size(); ++i) {
      auto step = RecipeStepFromProto(spec_.recipe(i), "recipe");
      ASSERT_TRUE(step.ok()) << step.status();
      EXPECT_EQ(*step, preset->steps[i]);
    }
    QAAS_EXPECT_OK(Validate());  // idempotent
  }
  spec_.clear_recipe();
  spec_.set_preset("magic");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

TEST_F(SpecValidationTest, UrisMustStayInsideTheRoots) {
  spec_.set_model("file://" + root_ + "/../../etc");
  absl::Status st = Validate();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("outside"), absl::string_view::npos) << st;

  // A symlink inside the root that points outside is refused too.
  std::filesystem::create_directory_symlink("/etc", root_ + "/escape");
  spec_.set_model("file://" + root_ + "/escape");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);

  spec_.set_model("file://" + root_ + "/model");
  spec_.mutable_calibration()->set_dataset("file:///etc/passwd");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  spec_.mutable_calibration()->set_dataset("http://example/x");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

// A root behind a symlink (../shared a link, as on some checkouts): the
// roots and the requested paths are both resolved before they are compared.
TEST_F(SpecValidationTest, RootsAndPathsBehindSymlinksAreResolved) {
  const std::string link = dir_.path() + "/root-link";
  std::filesystem::create_directory_symlink(root_, link);
  // The root resolved (as qaas-server resolves --file_roots), the uri through the link.
  spec_.set_model("file://" + link + "/model");
  spec_.mutable_calibration()->set_dataset("file://" + link + "/calib.txt");
  spec_.set_output("file://" + link + "/out/not-made-yet");
  QAAS_EXPECT_OK(Validate());
  // The root named by the link, the uri through its target.
  options_.file_roots = {link};
  spec_.set_model("file://" + root_ + "/model");
  spec_.set_output("file://" + root_ + "/out/not-made-yet");
  QAAS_EXPECT_OK(Validate());
  // Through the link, a symlink inside the root that points outside still escapes.
  std::filesystem::create_directory_symlink("/etc", root_ + "/escape");
  spec_.set_model("file://" + link + "/escape");
  absl::Status st = Validate();
  QAAS_EXPECT_CODE(st, kInvalidArgument);
  EXPECT_NE(st.message().find("outside"), absl::string_view::npos) << st;
  spec_.set_model("file://" + link + "/model");
  spec_.set_output("file://" + link + "/escape/out");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  // A path outside every root that is not a link stays outside.
  spec_.set_output("file://" + dir_.path() + "/elsewhere");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

TEST_F(SpecValidationTest, S3UrisNeedABucket) {
  spec_.set_model("s3://models/llama-7b");
  spec_.mutable_calibration()->set_dataset("s3://data/wikitext.txt");
  spec_.set_output("s3://results/run-1");
  QAAS_EXPECT_OK(Validate());
  spec_.set_output("s3:///no-bucket");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

TEST_F(SpecValidationTest, MissingModelDirectoryOrConfig) {
  spec_.set_model("file://" + root_ + "/nope");
  absl::Status st = Validate();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("does not exist"), absl::string_view::npos) << st;
  std::filesystem::create_directories(root_ + "/empty");
  spec_.set_model("file://" + root_ + "/empty");
  st = Validate();
  EXPECT_NE(st.message().find("config.json"), absl::string_view::npos) << st;
  spec_.clear_model();
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

TEST_F(SpecValidationTest, LimitsAreChecked) {
  spec_.mutable_calibration()->set_num_samples(-1);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  spec_.mutable_calibration()->set_num_samples(10);
  auto* e = spec_.add_evaluation();
  e->set_dataset("file://" + root_ + "/calib.txt");
  e->set_seq_len(-5);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  e->set_seq_len(512);
  spec_.mutable_resources()->set_device("tpu");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  spec_.mutable_resources()->set_device("cpu");
  spec_.set_priority(5000);
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
  spec_.set_priority(1);
  spec_.mutable_scheme()->set_shorthand("W16A16");
  QAAS_EXPECT_CODE(Validate(), kInvalidArgument);
}

// Zero-shot tasks: known names, each once, their files under tasks.data
// present now, and the limits.
TEST_F(SpecValidationTest, TasksAreChecked) {
  std::filesystem::create_directories(root_ + "/tasks");
  WriteLocalFile(root_ + "/tasks/piqa.validation.jsonl", "{}\n");
  WriteLocalFile(root_ + "/tasks/lambada_openai.test.jsonl", "{}\n");
  auto expect = [&](const std::string& needle) {
    const absl::Status st = Validate();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find(needle), absl::string_view::npos) << "want '" << needle << "' in " << st;
  };
  auto* t = spec_.mutable_tasks();
  t->add_names("piqa");
  expect("tasks.data: required");
  t->set_data("file://" + root_ + "/tasks/");
  QAAS_EXPECT_OK(Validate());
  t->add_names("lambada_openai");
  QAAS_EXPECT_OK(Validate());
  t->add_names("mmlu");
  expect("tasks.names[2]: unknown task 'mmlu' (known: piqa, arc_easy, arc_challenge, hellaswag, winogrande, boolq, "
         "lambada_openai)");
  t->set_names(2, "piqa");
  expect("tasks.names[2]: 'piqa' is named twice");
  t->set_names(2, "hellaswag");
  expect("tasks.data: '" "file://" + root_ + "/tasks/hellaswag.validation.jsonl' does not exist");
  t->mutable_names()->RemoveLast();
  t->set_limit(-1);
  expect("tasks.limit");
  t->set_limit(100);
  t->set_max_length(1);
  expect("tasks.max_length");
  t->set_max_length(1024);
  QAAS_EXPECT_OK(Validate());
  t->set_data("file:///etc");
  expect("tasks.data");
  t->clear_names();
  t->set_data("file://" + root_ + "/tasks");
  expect("tasks.names: required when tasks are set");
  // The server's default location fills an empty tasks.data.
  t->add_names("piqa");
  t->clear_data();
  options_.default_task_data = "file://" + root_ + "/tasks";
  QAAS_EXPECT_OK(Validate());
  EXPECT_EQ(spec_.tasks().data(), "file://" + root_ + "/tasks");
}

// What the worker would refuse minutes later is refused at submit, by the
// same parser and rules (each was accepted once).
TEST_F(SpecValidationTest, WhatIsKnowableAtSubmitIsCheckedThere) {
  auto expect = [&](const std::string& needle) {
    const absl::Status st = Validate();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find(needle), absl::string_view::npos) << "want '" << needle << "' in " << st;
  };
  // Sequence lengths beyond the model's context (512 here), or of 1.
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/calib.txt");
  spec_.mutable_calibration()->set_seq_len(1024);
  expect("calibration.seq_len: 1024 exceeds the model's context (max_position_embeddings 512)");
  spec_.mutable_calibration()->set_seq_len(1);
  expect("calibration.seq_len: must be 0 (default) or 2..");
  spec_.mutable_calibration()->set_seq_len(512);
  auto* e = spec_.add_evaluation();
  e->set_dataset("file://" + root_ + "/calib.txt");
  e->set_seq_len(4096);
  expect("evaluation[0].seq_len: 4096 exceeds the model's context");
  e->set_seq_len(0);
  QAAS_ASSERT_OK(Validate());
  // Datasets that do not exist, are empty, or are not files.
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/absent.txt");
  expect("calibration.dataset: 'file://" + root_ + "/absent.txt' does not exist");
  WriteLocalFile(root_ + "/empty.txt", "");
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/empty.txt");
  expect("is empty");
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/model");
  expect("is not a regular file");
  spec_.mutable_calibration()->set_dataset("file://" + root_ + "/calib.txt");
  e->set_dataset("file://" + root_ + "/absent.txt");
  expect("evaluation[0].dataset: 'file://" + root_ + "/absent.txt' does not exist");
  e->set_dataset("file://" + root_ + "/calib.txt");
  // A config.json the worker's parser refuses: absurd sizes, missing fields.
  WriteLocalFile(root_ + "/model/config.json",
                 R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "vocab_size": 2147483647, "max_position_embeddings": 512})");
  expect("'vocab_size' must be a positive integer");
  WriteLocalFile(root_ + "/model/config.json", R"({"model_type": "llama"})");
  expect("config.json: missing 'hidden_size'");
  // A config.json no model has (read whole, it would sit in the server's memory).
  WriteLocalFile(root_ + "/model/config.json", std::string(2 << 20, ' '));
  expect("config.json is 2097152 bytes; a model config is at most 1048576");
  // A NaN option is out of every range.
  WriteLocalFile(root_ + "/model/config.json", ::qaas::testing::kTestModelConfig);
  spec_.clear_preset();
  spec_.clear_recipe();
  auto* step = spec_.add_recipe();
  step->set_method("gptq");
  step->mutable_gptq()->set_damp(std::nan(""));
  expect("recipe[0].gptq.damp");
}

}  // namespace
}  // namespace qaas::server

namespace qaas::server {
namespace {

TEST_F(SpecValidationTest, ArtifactFormatIsResolvedAtSubmitOrRefusedSayingWhy) {
  absl::Status s;
  QAAS_ASSERT_OK(Validate());
  EXPECT_EQ(spec_.artifact().format(), "gptq");  // "" is auto: weight-only integers stay GPTQ
  SetScheme("W8A8_sym");
  spec_.mutable_artifact()->set_format("auto");
  QAAS_ASSERT_OK(Validate());
  EXPECT_EQ(spec_.artifact().format(), "compressed-tensors");
  // Validation is idempotent: the stored, resolved format validates again.
  QAAS_ASSERT_OK(Validate());
  EXPECT_EQ(spec_.artifact().format(), "compressed-tensors");

  SetScheme("W4A16g32");
  spec_.mutable_artifact()->set_format("compressed-tensors");
  QAAS_ASSERT_OK(Validate());
  // The model's widths (hidden 64) are read from its config: no ragged groups.
  SetScheme("W4A16g128");
  s = Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("64 input features"), std::string::npos) << s;
  spec_.mutable_artifact()->set_format("auto");
  SetScheme("Wmxfp4");
  QAAS_ASSERT_OK(Validate());
  EXPECT_EQ(spec_.artifact().format(), "compressed-tensors");
  SetScheme("W4A16g32");
  spec_.mutable_artifact()->set_format("compressed-tensors");
  spec_.clear_recipe();
  spec_.set_preset("");
  auto* step = spec_.add_recipe();
  step->set_method("gptq");
  step->mutable_gptq()->set_act_order(true);
  s = Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("artifact.format"), std::string::npos) << s;
  EXPECT_NE(s.message().find("g_idx"), std::string::npos) << s;

  spec_.mutable_artifact()->set_format("safetensors-fp8");
  s = Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'safetensors-fp8'"), std::string::npos) << s;
}

}  // namespace
}  // namespace qaas::server
