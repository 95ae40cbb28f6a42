#include "quant/export.h"

#include <ATen/ATen.h>

#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "quant/methods/rtn.h"
#include "quant/model/checkpoint.h"
#include "quant/scheme.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

TensorQuant IntSpec(int bits, bool symmetric, int group_size) {
  TensorQuant q;
  q.format = NumberFormat::kInt;
  q.bits = bits;
  q.symmetric = symmetric;
  q.group_size = group_size;
  q.granularity = group_size > 0 ? Granularity::kPerGroup : Granularity::kPerChannel;
  return q;
}

std::map<std::string, RawTensor> ByName(const std::vector<RawTensor>& tensors) {
  std::map<std::string, RawTensor> out;
  for (const auto& t : tensors) out[t.name] = t;
  return out;
}

struct ExportCase {
  int bits;
  bool symmetric;
  int group_size;
};
void PrintTo(const ExportCase& c, std::ostream* os) { *os << "W" << c.bits << "g" << c.group_size << (c.symmetric ? "sym" : "asym"); }

class GptqExportTest : public ::testing::TestWithParam<ExportCase> {};

TEST_P(GptqExportTest, UnpackingThePackedLayerGivesTheRtnWeightsExactly) {
  const ExportCase c = GetParam();
  for (auto [out, in] : {std::pair<int64_t, int64_t>{96, 256}, {40, 172}}) {
    SCOPED_TRACE(std::to_string(out) + "x" + std::to_string(in));
    at::manual_seed(c.bits + 17 * out);
    at::Tensor w = at::randn({out, in}) * 0.05;
    w[0].zero_();  // an all-zero row
    const QuantizedLinear q = QuantizeRtn(w, IntSpec(c.bits, c.symmetric, c.group_size));
    const std::string prefix = "model.layers.3.mlp.up_proj";
    const auto tensors = ByName(PackGptqLinear(prefix, q, at::Tensor()));
    EXPECT_EQ(tensors.size(), 4u);
    EXPECT_EQ(tensors.count(prefix + ".bias"), 0u);

    const int64_t groups = c.group_size == 0 || c.group_size >= in ? 1 : (in + c.group_size - 1) / c.group_size;
    const RawTensor& qweight = tensors.at(prefix + ".qweight");
    EXPECT_EQ(qweight.dtype, DType::kI32);
    EXPECT_EQ(qweight.shape, (std::vector<int64_t>{(in * c.bits + 31) / 32, out}));
    const RawTensor& qzeros = tensors.at(prefix + ".qzeros");
    EXPECT_EQ(qzeros.dtype, DType::kI32);
    EXPECT_EQ(qzeros.shape, (std::vector<int64_t>{groups, (out * c.bits + 31) / 32}));
    const RawTensor& scales = tensors.at(prefix + ".scales");
    EXPECT_EQ(scales.dtype, DType::kF16);
    EXPECT_EQ(scales.shape, (std::vector<int64_t>{groups, out}));
    const RawTensor& g_idx = tensors.at(prefix + ".g_idx");
    EXPECT_EQ(g_idx.dtype, DType::kI32);
    EXPECT_EQ(g_idx.shape, (std::vector<int64_t>{in}));
    EXPECT_TRUE(RawToTensor(g_idx).equal(q.g_idx));
    EXPECT_TRUE(RawToTensor(scales).to(at::kFloat).equal(q.params.scale.t()));

    auto back = UnpackGptqLinear(tensors, prefix, c.bits, in, out);
    QAAS_ASSERT_OK(back);
    EXPECT_EQ(back->scalar_type(), at::kFloat);
    ASSERT_EQ(back->sizes().vec(), (std::vector<int64_t>{out, in}));
    EXPECT_TRUE(back->equal(q.dequantized))
        << "max diff " << (*back - q.dequantized).abs().max().item<float>();
  }
}

INSTANTIATE_TEST_SUITE_P(
    BitsGroupsSymmetry, GptqExportTest,
    ::testing::Values(ExportCase{2, false, 0}, ExportCase{2, true, 128}, ExportCase{3, false, 128},
                      ExportCase{3, true, 0}, ExportCase{4, false, 128}, ExportCase{4, true, 128},
                      ExportCase{4, false, 0}, ExportCase{4, true, 0}, ExportCase{8, false, 128},
                      ExportCase{8, true, 0}),
    [](const ::testing::TestParamInfo<ExportCase>& info) {
      return "W" + std::to_string(info.param.bits) + "g" + std::to_string(info.param.group_size) +
             (info.param.symmetric ? "sym" : "asym");
    });

TEST(GptqExportTest, SymmetricZerosAreStoredMinusOne) {
  // GPTQ "v1": a symmetric 4-bit zero of 8 is stored as 7 in every nibble.
  at::manual_seed(1);
  const QuantizedLinear q = QuantizeRtn(at::randn({16, 64}), IntSpec(4, true, 0));
  const auto tensors = ByName(PackGptqLinear("p", q, at::Tensor()));
  at::Tensor qzeros = RawToTensor(tensors.at("p.qzeros"));
  ASSERT_EQ(qzeros.sizes().vec(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(static_cast<uint32_t>(qzeros[0][0].item<int32_t>()), 0x77777777u);
  EXPECT_EQ(static_cast<uint32_t>(qzeros[0][1].item<int32_t>()), 0x77777777u);
}

TEST(GptqExportTest, BiasIsStoredInFloat16) {
  at::manual_seed(2);
  const QuantizedLinear q = QuantizeRtn(at::randn({8, 32}), IntSpec(4, false, 0));
  at::Tensor bias = at::randn({8});
  const auto tensors = ByName(PackGptqLinear("p", q, bias));
  ASSERT_EQ(tensors.count("p.bias"), 1u);
  EXPECT_EQ(tensors.at("p.bias").dtype, DType::kF16);
  EXPECT_TRUE(RawToTensor(tensors.at("p.bias")).equal(bias.to(at::kHalf)));
}

TEST(GptqExportTest, MissingOrMalformedTensorsAreInvalidArgumentNamingThem) {
  at::manual_seed(3);
  const QuantizedLinear q = QuantizeRtn(at::randn({32, 64}), IntSpec(4, false, 32));
  const auto good = ByName(PackGptqLinear("p", q, at::Tensor()));
  QAAS_ASSERT_OK(UnpackGptqLinear(good, "p", 4, 64, 32));

  for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"}) {
    SCOPED_TRACE(suffix);
    auto missing = good;
    missing.erase(std::string("p") + suffix);
    auto w = UnpackGptqLinear(missing, "p", 4, 64, 32);
    QAAS_EXPECT_CODE(w, kInvalidArgument);
    EXPECT_TRUE(MessageHas(w, std::string("p") + suffix));
  }

  auto w = UnpackGptqLinear(good, "q", 4, 64, 32);
  QAAS_EXPECT_CODE(w, kInvalidArgument);
  EXPECT_TRUE(MessageHas(w, "q.qweight"));

  auto wrong_dtype = good;
  wrong_dtype["p.scales"] = TensorToRaw("p.scales", RawToTensor(good.at("p.scales")).to(at::kFloat));
  w = UnpackGptqLinear(wrong_dtype, "p", 4, 64, 32);
  QAAS_EXPECT_CODE(w, kInvalidArgument);
  EXPECT_TRUE(MessageHas(w, "p.scales"));

  w = UnpackGptqLinear(good, "p", 4, 128, 32);  // the caller expects another shape
  QAAS_EXPECT_CODE(w, kInvalidArgument);
  EXPECT_TRUE(MessageHas(w, "'p'"));
  QAAS_EXPECT_CODE(UnpackGptqLinear(good, "p", 4, 64, 16), kInvalidArgument);

  // Packed tensors of the wrong width or rank must not be read past their end.
  auto narrow_zeros = good;
  narrow_zeros["p.qzeros"] =
      TensorToRaw("p.qzeros", RawToTensor(good.at("p.qzeros")).narrow(1, 0, 1).contiguous());
  w = UnpackGptqLinear(narrow_zeros, "p", 4, 64, 32);
  QAAS_EXPECT_CODE(w, kInvalidArgument);
  EXPECT_TRUE(MessageHas(w, "'p'"));
  auto flat_scales = good;
  flat_scales["p.scales"] = TensorToRaw("p.scales", RawToTensor(good.at("p.scales")).flatten());
  w = UnpackGptqLinear(flat_scales, "p", 4, 64, 32);
  QAAS_EXPECT_CODE(w, kInvalidArgument);
  EXPECT_TRUE(MessageHas(w, "dimensions"));

  auto bad_groups = good;
  at::Tensor g_idx = RawToTensor(good.at("p.g_idx")).clone();
  g_idx[5] = 2;  // there are 2 groups: 0 and 1
  bad_groups["p.g_idx"] = TensorToRaw("p.g_idx", g_idx);
  w = UnpackGptqLinear(bad_groups, "p", 4, 64, 32);
  QAAS_EXPECT_CODE(w, kInvalidArgument);
  EXPECT_TRUE(MessageHas(w, "p.g_idx"));
}

TEST(GptqExportTest, QuantizationConfigDescribesTheScheme) {
  auto grouped = ParseScheme("W4A16g128");
  QAAS_ASSERT_OK(grouped);
  nlohmann::json j = GptqQuantizationConfig(*grouped);
  EXPECT_EQ(j["quant_method"], "gptq");
  EXPECT_EQ(j["bits"], 4);
  EXPECT_EQ(j["group_size"], 128);
  EXPECT_EQ(j["sym"], false);
  EXPECT_EQ(j["desc_act"], false);
  EXPECT_EQ(j["checkpoint_format"], "gptq");

  auto channel = ParseScheme("W8A16_sym");
  QAAS_ASSERT_OK(channel);
  j = GptqQuantizationConfig(*channel);
  EXPECT_EQ(j["bits"], 8);
  EXPECT_EQ(j["group_size"], -1);
  EXPECT_EQ(j["sym"], true);
}

TEST(ArtifactLayoutTest, ChosenByNameAndUnknownNamesAreRefusedNamingTheKnown) {
  for (const char* name : {"gptq", "dequantized"}) {
    auto layout = MakeArtifactLayout(name);
    QAAS_ASSERT_OK(layout);
    EXPECT_EQ((*layout)->name(), name);
  }
  auto unknown = MakeArtifactLayout("awq");
  QAAS_EXPECT_CODE(unknown, kInvalidArgument);
  EXPECT_TRUE(MessageHas(unknown, "'awq'"));
  EXPECT_TRUE(MessageHas(unknown, "gptq"));
}

// The quantized model evaluates the bias the layout stores.
TEST(ArtifactLayoutTest, GptqStoresBiasesOfIntegerLayersInFloat16) {
  auto layout = MakeArtifactLayout("gptq");
  QAAS_ASSERT_OK(layout);
  const at::Tensor bias = at::tensor({0.1f, 1.0f / 3, 1e-5f});
  QuantizedLinear q;
  const at::Tensor stored = (*layout)->StoredBias(q, bias);
  EXPECT_TRUE(stored.equal(bias.to(at::kHalf).to(at::kFloat)));
  EXPECT_FALSE(stored.equal(bias));
  q.mx = true;  // MX layers keep theirs as they are
  EXPECT_TRUE((*layout)->StoredBias(q, bias).equal(bias));
  EXPECT_FALSE((*layout)->StoredBias(q, at::Tensor()).defined());
}

TEST(ArtifactLayoutTest, GptqConfigNamesTheFormatTheLayersHave) {
  auto layout = MakeArtifactLayout("gptq");
  QAAS_ASSERT_OK(layout);
  const nlohmann::json original = {{"model_type", "llama"}};
  ArtifactSummary s;
  s.scheme = MustParse("W4A16g128");
  s.weight_step = RecipeStep{"gptq", {}};
  s.weight_step.Set("act_order", true);
  auto [config, format] = (*layout)->Config(original, s);
  EXPECT_EQ(format, "gptq");
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["quantization_config"]["quant_method"], "gptq");
  EXPECT_EQ(config["quantization_config"]["desc_act"], true);
  s.per_input_channel_layers = {"model.layers.0.mlp.down_proj"};
  std::tie(config, format) = (*layout)->Config(original, s);
  EXPECT_EQ(format, "adadim");
  EXPECT_EQ(config["quantization_config"]["per_input_channel_layers"][0], "model.layers.0.mlp.down_proj");
  s.reordered = true;
  EXPECT_EQ((*layout)->Config(original, s).second, "rptq");
  s = ArtifactSummary();
  s.scheme = MustParse("W16A16");
  std::tie(config, format) = (*layout)->Config(original, s);
  EXPECT_FALSE(config.contains("quantization_config"));
  s.scheme = MustParse("Wmxfp4");
  EXPECT_EQ((*layout)->Config(original, s).second, "mx");
}

}  // namespace
}  // namespace qaas::quant
