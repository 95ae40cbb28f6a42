// The method table (quant/method_table.h): its rows are consistent, the
// methods' option structs have its defaults, the recipe rules and both CLIs'
// flags read it, and docs/api.md's method tables are generated from it.
#include "quant/method_table.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "cli/method_flags.h"
#include "quant/methods/gptq.h"
#include "quant/methods/omniquant.h"
#include "quant/methods/rptq.h"
#include "quant/methods/smoothquant.h"
#include "quant/recipe_rules.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

Scheme MustParse(const std::string& s) {
  auto scheme = ParseScheme(s);
  EXPECT_TRUE(scheme.ok()) << scheme.status();
  return scheme.ok() ? *scheme : Scheme{};
}

bool Has(const absl::Status& st, absl::string_view text) {
  return st.message().find(text) != absl::string_view::npos;
}

// A value within the option's bounds that is not its default.
OptionValue NonDefault(const OptionSpec& o) {
  switch (o.type) {
    case OptionType::kDouble: return o.max;
    case OptionType::kInt: return static_cast<int>(o.max);
    case OptionType::kBool: return true;
    case OptionType::kChoice: return o.choices.back();
    case OptionType::kIntList: return std::vector<int>(o.length, static_cast<int>(o.max));
  }
  return 0.0;
}

TEST(MethodTable, RowsAreConsistent) {
  std::set<std::string> names, presets;
  std::map<std::string, const OptionSpec*> flags;
  for (const MethodSpec& m : Methods()) {
    SCOPED_TRACE(m.name);
    EXPECT_TRUE(names.insert(m.name).second) << "duplicate method";
    EXPECT_EQ(FindMethod(m.name), &m);
    EXPECT_FALSE(m.help.empty());
    std::set<std::string> options;
    for (const OptionSpec& o : m.options) {
      SCOPED_TRACE(o.name);
      EXPECT_TRUE(options.insert(o.name).second) << "duplicate option";
      EXPECT_EQ(o.default_value.index(), static_cast<size_t>(o.type));
      EXPECT_TRUE(CheckOptionValue(o, o.default_value).ok()) << "the default is out of bounds";
      EXPECT_TRUE(CheckOptionValue(o, NonDefault(o)).ok());
      EXPECT_FALSE(o.flag.empty());
      EXPECT_FALSE(o.help.empty());
      // The API cannot say false for a bool: an unset field is the default.
      if (o.type == OptionType::kBool) EXPECT_FALSE(std::get<bool>(o.default_value));
      if (o.type == OptionType::kChoice) EXPECT_EQ(std::get<std::string>(o.default_value), o.choices.front());
      // Options that share a flag are the same option.
      auto [it, inserted] = flags.emplace(o.flag, &o);
      if (!inserted) {
        EXPECT_EQ(it->second->name, o.name);
        EXPECT_EQ(it->second->type, o.type);
        EXPECT_EQ(it->second->default_value, o.default_value);
        EXPECT_EQ(FormatBounds(*it->second), FormatBounds(o));
      }
    }
    for (const auto& [other, why] : m.excludes) EXPECT_NE(FindMethod(other), nullptr) << other;
    for (const Preset& p : m.presets) {
      EXPECT_TRUE(presets.insert(p.name).second) << "duplicate preset " << p.name;
      EXPECT_EQ(FindPreset(p.name), &p);
      EXPECT_TRUE(CheckRecipe(p.steps).ok()) << p.name << ": " << CheckRecipe(p.steps);
    }
  }
  EXPECT_EQ(MethodNames().size(), Methods().size());
  EXPECT_EQ(FindMethod("magic"), nullptr);
  EXPECT_EQ(FindPreset("magic"), nullptr);
}

// The methods' option structs keep their own defaults for direct callers;
// they must be the table's.
TEST(MethodTable, DefaultsMatchTheOptionStructs) {
  const GptqOptions gptq;
  for (const char* method : {"gptq", "adadim"}) {
    SCOPED_TRACE(method);
    const RecipeStep step{method, {}};
    EXPECT_EQ(std::get<double>(*step.Value("damp")), gptq.percdamp);
    EXPECT_EQ(std::get<int>(*step.Value("block_size")), gptq.blocksize);
    EXPECT_EQ(std::get<bool>(*step.Value("act_order")), gptq.act_order);
    EXPECT_EQ(std::get<bool>(*step.Value("static_groups")), gptq.static_groups);
  }
  EXPECT_EQ(std::get<std::string>(*RecipeStep{"adadim", {}}.Value("base")), "rtn");
  EXPECT_EQ(std::get<double>(*RecipeStep{"smoothquant", {}}.Value("alpha")), SmoothQuantOptions{}.alpha);
  EXPECT_EQ(std::get<std::vector<int>>(*RecipeStep{"rptq", {}}.Value("clusters")), RptqOptions{}.clusters);
  const OmniQuantOptions omni;
  const RecipeStep omniquant{"omniquant", {}};
  EXPECT_EQ(std::get<int>(*omniquant.Value("epochs")), omni.epochs);
  EXPECT_EQ(std::get<double>(*omniquant.Value("lwc_lr")), omni.lwc_lr);
  EXPECT_EQ(std::get<double>(*omniquant.Value("let_lr")), omni.let_lr);
  // Every option of a method is read by its OptionsOf: none is left out.
  EXPECT_EQ(FindMethod("gptq")->options.size(), 4u);
  EXPECT_EQ(FindMethod("adadim")->options.size(), 5u);
  EXPECT_EQ(FindMethod("smoothquant")->options.size(), 1u);
  EXPECT_EQ(FindMethod("rptq")->options.size(), 1u);
  EXPECT_EQ(FindMethod("omniquant")->options.size(), 3u);
  EXPECT_EQ(FindMethod("rtn")->options.size(), 0u);
}

TEST(MethodTable, OptionsOfTakeTheGivenValues) {
  RecipeStep gptq{"gptq", {}};
  gptq.Set("damp", 0.1).Set("block_size", 64).Set("act_order", true).Set("static_groups", true);
  const GptqOptions g = GptqOptionsOf(gptq);
  EXPECT_EQ(g.percdamp, 0.1);
  EXPECT_EQ(g.blocksize, 64);
  EXPECT_TRUE(g.act_order);
  EXPECT_TRUE(g.static_groups);
  // Another method's step leaves the struct's defaults.
  EXPECT_EQ(GptqOptionsOf(RecipeStep{"rtn", {}}).percdamp, GptqOptions{}.percdamp);
  RecipeStep adadim{"adadim", {}};
  adadim.Set("base", "gptq").Set("act_order", true);
  EXPECT_EQ(adadim.Get("base", "rtn"), "gptq");
  EXPECT_TRUE(GptqOptionsOf(adadim).act_order);
  RecipeStep sq{"smoothquant", {}};
  sq.Set("alpha", 1);  // an int for a double option
  EXPECT_EQ(SmoothQuantOptionsOf(sq).alpha, 1.0);
  RecipeStep rptq{"rptq", {}};
  rptq.Set("clusters", std::vector<int>{8, 4, 4, 8, 8});
  EXPECT_EQ(RptqOptionsOf(rptq).clusters, (std::vector<int>{8, 4, 4, 8, 8}));
  RecipeStep omni{"omniquant", {}};
  omni.Set("epochs", 3).Set("lwc_lr", 0.5).Set("let_lr", 0.25);
  const OmniQuantOptions o = OmniQuantOptionsOf(omni);
  EXPECT_EQ(o.epochs, 3);
  EXPECT_EQ(o.lwc_lr, 0.5);
  EXPECT_EQ(o.let_lr, 0.25);
}

// Each bound, in one place: out of it the step is refused, naming the field.
TEST(MethodTable, OutOfBoundsOptionsAreRefusedNamingTheField) {
  struct Case {
    RecipeStep step;
    std::string field;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<Case> cases = {
      {RecipeStep{"gptq", {}}.Set("damp", nan), "recipe[0].gptq.damp"},
      {RecipeStep{"gptq", {}}.Set("damp", 0.0), "recipe[0].gptq.damp"},
      {RecipeStep{"gptq", {}}.Set("damp", 1.5), "recipe[0].gptq.damp"},
      {RecipeStep{"gptq", {}}.Set("block_size", 0), "recipe[0].gptq.block_size"},
      {RecipeStep{"adadim", {}}.Set("base", "magic"), "recipe[0].adadim.base"},
      {RecipeStep{"adadim", {}}.Set("damp", -1.0), "recipe[0].adadim.damp"},
      {RecipeStep{"smoothquant", {}}.Set("alpha", 1.5), "recipe[0].smoothquant.alpha"},
      {RecipeStep{"smoothquant", {}}.Set("alpha", nan), "recipe[0].smoothquant.alpha"},
      {RecipeStep{"rptq", {}}.Set("clusters", std::vector<int>{8}), "recipe[0].rptq.clusters"},
      {RecipeStep{"rptq", {}}.Set("clusters", std::vector<int>{8, 4, 4, 8, 65537}), "recipe[0].rptq.clusters"},
      {RecipeStep{"rptq", {}}.Set("clusters", std::vector<int>{8, 4, 0, 8, 8}), "recipe[0].rptq.clusters"},
      {RecipeStep{"omniquant", {}}.Set("epochs", -1), "recipe[0].omniquant.epochs"},
      {RecipeStep{"omniquant", {}}.Set("epochs", 1001), "recipe[0].omniquant.epochs"},
      {RecipeStep{"omniquant", {}}.Set("lwc_lr", 0.0), "recipe[0].omniquant.lwc_lr"},
      {RecipeStep{"omniquant", {}}.Set("let_lr", 5.0), "recipe[0].omniquant.let_lr"},
      {RecipeStep{"omniquant", {}}.Set("epochs", 2.5), "recipe[0].omniquant.epochs"},  // not an integer
      {RecipeStep{"rtn", {}}.Set("damp", 0.1), "recipe[0].rtn: no option 'damp'"},
      {RecipeStep{"magic", {}}, "recipe[0]: unknown method 'magic'"},
  };
  for (const Case& c : cases) {
    absl::Status st = CheckRecipe({c.step});
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_TRUE(Has(st, c.field)) << st;
  }
  // Every option: within bounds fine, just out of them refused.
  for (const MethodSpec& m : Methods()) {
    for (const OptionSpec& o : m.options) {
      SCOPED_TRACE(m.name + "." + o.name);
      RecipeStep step{m.name, {{o.name, NonDefault(o)}}};
      EXPECT_TRUE(CheckStepOptions(step, "recipe[0]").ok());
      if (o.type == OptionType::kBool) continue;
      step.options[o.name] = o.type == OptionType::kDouble   ? OptionValue(o.max * 2 + 1)
                             : o.type == OptionType::kInt    ? OptionValue(static_cast<int>(o.max) + 1)
                             : o.type == OptionType::kChoice ? OptionValue(std::string("magic"))
                                                             : OptionValue(std::vector<int>(o.length + 1, 1));
      absl::Status st = CheckStepOptions(step, "recipe[0]");
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_TRUE(Has(st, absl::StrCat("recipe[0].", m.name, ".", o.name, ": must be"))) << st;
    }
  }
}

TEST(MethodTable, RecipeRulesReadIt) {
  EXPECT_TRUE(IsTransformMethod("smoothquant"));
  EXPECT_TRUE(IsTransformMethod("rptq"));
  EXPECT_FALSE(IsTransformMethod("gptq"));
  EXPECT_FALSE(IsTransformMethod("magic"));
  const RecipeStep rtn{"rtn", {}}, gptq{"gptq", {}}, sq{"smoothquant", {}}, rptq{"rptq", {}},
      omni{"omniquant", {}};
  EXPECT_TRUE(CheckRecipeOrder({sq, rptq, gptq}).ok());
  EXPECT_TRUE(Has(CheckRecipeOrder({gptq, sq}), "before the weight quantizer"));
  EXPECT_TRUE(Has(CheckRecipeOrder({gptq, rtn}), "one weight quantizer"));
  EXPECT_TRUE(Has(CheckRecipeOrder({rptq, omni}), "rptq"));
  EXPECT_EQ(CalibrationNeed({rtn}, MustParse("W4A16")), "");
  EXPECT_EQ(CalibrationNeed({rtn}, MustParse("W8A8_static")), "static activation scales");
  EXPECT_EQ(CalibrationNeed({sq, rtn}, MustParse("W8A8")), "smoothquant");
  EXPECT_EQ(CalibrationNeed({gptq}, MustParse("W4A16")), "gptq");
  EXPECT_TRUE(Has(CheckRecipeFitsScheme({rptq}, MustParse("Wmxfp4Amxfp4")), "integer activations"));
  EXPECT_TRUE(CheckRecipeFitsScheme({gptq}, MustParse("Wmxfp4A16")).ok());
  RecipeStep ordered = gptq;
  ordered.Set("act_order", true);
  EXPECT_TRUE(Has(CheckRecipeFitsScheme({ordered}, MustParse("Wmxfp4A16")), "MX blocks"));
  EXPECT_TRUE(Has(CheckRecipeFitsScheme({RecipeStep{"adadim", {}}}, MustParse("Wmxint4A16")), "AdaDim"));
  EXPECT_TRUE(Has(CheckRecipeFitsScheme({omni}, MustParse("W8A8_static")), "omniquant"));
}

// docs/api.md holds MethodTableMarkdown() between its markers. With
// QAAS_UPDATE_DOCS set the test writes it there instead.
TEST(MethodTable, DocsApiMdHasTheTable) {
  const std::string path = std::string(QAAS_SOURCE_DIR) + "/docs/api.md";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::stringstream text;
  text << in.rdbuf();
  std::string doc = text.str();
  const std::string begin_marker = "<!-- method-table:begin", end_marker = "<!-- method-table:end -->";
  const size_t begin = doc.find(begin_marker);
  ASSERT_NE(begin, std::string::npos) << path << " has no " << begin_marker;
  const size_t body = doc.find("-->\n", begin);
  ASSERT_NE(body, std::string::npos);
  const size_t end = doc.find(end_marker, body);
  ASSERT_NE(end, std::string::npos) << path << " has no " << end_marker;
  const std::string have = doc.substr(body + 4, end - body - 4), want = MethodTableMarkdown();
  if (have != want && std::getenv("QAAS_UPDATE_DOCS")) {
    doc.replace(body + 4, end - body - 4, want);
    std::ofstream(path) << doc;
    GTEST_SKIP() << "wrote the method table into " << path;
  }
  EXPECT_EQ(have, want) << path << "'s method table is not the table's: run QAAS_UPDATE_DOCS=1 "
                        << "build/tests/quant/qaas_quant_test --gtest_filter='MethodTable*'";
  // It names every method, option with its default and bounds, flag and preset.
  for (const MethodSpec& m : Methods()) {
    EXPECT_NE(have.find("| `" + m.name + "` |"), std::string::npos) << m.name;
    for (const Preset& p : m.presets) EXPECT_NE(have.find("`" + p.name + "`"), std::string::npos) << p.name;
    for (const OptionSpec& o : m.options) {
      const std::string row = absl::StrCat("| `", m.name, ".", o.name, "` | ", OptionTypeName(o.type), " | ",
                                           FormatOptionValue(o.default_value), " | ", FormatBounds(o), " | `--",
                                           o.flag, "` |");
      EXPECT_NE(have.find(row), std::string::npos) << row;
    }
  }
}

// argv as TakeMethodFlags edits it.
struct Argv {
  Argv(const Argv&) = delete;
  explicit Argv(std::vector<std::string> a) : args(std::move(a)) {
    for (auto& s : args) ptrs.push_back(s.data());
    ptrs.push_back(nullptr);
    argc = static_cast<int>(args.size());
  }
  std::vector<std::string> Left() const { return std::vector<std::string>(ptrs.begin(), ptrs.begin() + argc); }
  std::vector<std::string> args;
  std::vector<char*> ptrs;
  int argc;
};

// qaas-quantize and qaasctl take the table's flags through these two calls
// (qaasctl then converts the steps to the proto: proto/recipe_convert.h,
// tested in the server's tests).
TEST(MethodFlags, EveryOptionOfTheTableIsAFlagOfBothClis) {
  for (const MethodSpec& m : Methods()) {
    for (const OptionSpec& o : m.options) {
      SCOPED_TRACE(m.name + " --" + o.flag);
      const OptionValue value = NonDefault(o);
      const std::string text = FormatOptionValue(value);
      for (int form = 0; form < 2; ++form) {
        std::vector<std::string> args = {"cli", "--recipe", m.name, "--" + o.flag + "=" + text, "--model", "m"};
        if (form == 1) args = {"cli", "--recipe", m.name, "-" + o.flag, text, "--model", "m"};
        if (form == 1 && o.type == OptionType::kBool) args = {"cli", "--recipe", m.name, "--" + o.flag, "--model", "m"};
        Argv argv(args);
        auto flags = cli::TakeMethodFlags(&argv.argc, argv.ptrs.data());
        ASSERT_TRUE(flags.ok()) << flags.status();
        EXPECT_EQ(argv.Left(), (std::vector<std::string>{"cli", "--recipe", m.name, "--model", "m"}));
        EXPECT_EQ(argv.ptrs[argv.argc], nullptr);
        auto recipe = cli::RecipeFromFlags(m.name, *flags);
        ASSERT_TRUE(recipe.ok()) << recipe.status();
        ASSERT_EQ(recipe->size(), 1u);
        EXPECT_EQ(*(*recipe)[0].Value(o.name), value);
        EXPECT_TRUE(CheckRecipe(*recipe).ok());
      }
      // Out of bounds: refused naming the flag.
      if (o.type == OptionType::kDouble || o.type == OptionType::kInt) {
        auto recipe = cli::RecipeFromFlags(m.name, {{o.flag, absl::StrCat(o.max + 1)}});
        EXPECT_EQ(recipe.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_TRUE(Has(recipe.status(), "--" + o.flag + ": must be")) << recipe.status();
      }
    }
    // Help lists the method and its flags.
    EXPECT_NE(cli::MethodFlagsHelp().find("  " + m.name + ": "), std::string::npos);
    for (const OptionSpec& o : m.options) {
      EXPECT_NE(cli::MethodFlagsHelp().find("    --" + o.flag + " ("), std::string::npos) << o.flag;
    }
  }
}

TEST(MethodFlags, BooleansNegateAndUnusedOrBadFlagsAreRefused) {
  Argv argv({"cli", "--noact_order", "--damp", "0.05", "--", "--alpha", "1"});
  auto flags = cli::TakeMethodFlags(&argv.argc, argv.ptrs.data());
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(argv.Left(), (std::vector<std::string>{"cli", "--", "--alpha", "1"}));
  EXPECT_EQ(flags->at("act_order"), "false");
  // --damp applies to gptq and to adadim (over gptq) alike.
  auto recipe = cli::RecipeFromFlags("smoothquant,adadim", *flags);
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  EXPECT_EQ((*recipe)[1].Get("damp", 0.0), 0.05);
  EXPECT_FALSE((*recipe)[1].Get("act_order", true));
  EXPECT_TRUE((*recipe)[0].options.empty());
  // A flag no step takes, a value that does not parse, a flag without its value.
  auto unused = cli::RecipeFromFlags("rtn", *flags);
  EXPECT_TRUE(Has(unused.status(), "--act_order is an option of gptq and adadim")) << unused.status();
  EXPECT_TRUE(Has(cli::RecipeFromFlags("rptq", {{"rptq_clusters", "8,x"}}).status(), "--rptq_clusters: 'x'"));
  Argv dangling({"cli", "--epochs"});
  EXPECT_FALSE(cli::TakeMethodFlags(&dangling.argc, dangling.ptrs.data()).ok());
}

// A preset is recipe steps with defaults: flags given with it apply to its
// steps (qaasctl once dropped them silently), and a flag none takes is refused.
TEST(MethodFlags, PresetsTakeTheFlagsOfTheirSteps) {
  auto gptq = cli::RecipeFromPreset("gptq", {{"damp", "0.05"}, {"act_order", "true"}});
  ASSERT_TRUE(gptq.ok()) << gptq.status();
  ASSERT_EQ(gptq->size(), 1u);
  EXPECT_EQ((*gptq)[0].method, "gptq");
  EXPECT_EQ((*gptq)[0].Get("damp", 0.0), 0.05);
  EXPECT_TRUE((*gptq)[0].Get("act_order", false));
  auto smooth = cli::RecipeFromPreset("smoothquant-gptq", {{"alpha", "0.7"}});
  ASSERT_TRUE(smooth.ok()) << smooth.status();
  EXPECT_EQ((*smooth)[0].Get("alpha", 0.0), 0.7);
  EXPECT_EQ((*smooth)[1].method, "gptq");
  const auto unused = cli::RecipeFromPreset("rtn", {{"damp", "0.05"}});
  EXPECT_TRUE(Has(unused.status(), "no step of the preset 'rtn' takes it")) << unused.status();
  const auto unknown = cli::RecipeFromPreset("gptqq", {});
  EXPECT_TRUE(Has(unknown.status(), "unknown preset 'gptqq' (known: ")) << unknown.status();
}

}  // namespace
}  // namespace qaas::quant
