// The CUDA path against the CPU path on stories260k (label "gpu"; skips
// without a CUDA device). Both paths compute in fp32; they differ only in the
// order of floating-point reductions (matmuls, norms, the Hessian), so RTN,
// whose codes depend on the weights alone, must agree but for ties at a
// rounding boundary, and GPTQ, whose codes follow the calibration Hessian,
// may flip codes that sit at a boundary.
#include <ATen/ATen.h>

#include <map>
#include <string>

#include "gtest/gtest.h"
#include "absl/strings/match.h"
#include "quant/model/checkpoint.h"
#include "quant/pipeline.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using nlohmann::json;
using ::qaas::testing::ScopedTempDir;

struct JobRun {
  json report;
  std::map<std::string, RawTensor> tensors;
};

JobRun RunOn(const std::string& device, const std::string& method, const std::string& out) {
  PipelineOptions o;
  o.model_dir = Stories260kDir();
  o.output_dir = out;
  o.scheme = MustParse("W4A16g128");
  o.recipe = {RecipeStep{method}};
  o.calibration = DatasetRef{TinyStoriesPath(), "tinystories-calib", 256, 0};
  o.num_samples = 16;
  o.evaluations = {DatasetRef{TinyStoriesPath(), "tinystories", 512, 0}};
  o.device = device;
  auto report = RunPipeline(o);
  EXPECT_TRUE(report.ok()) << report.status();
  if (!report.ok()) return {};
  return {ToJson(*report), ReadAll(out + "/artifact/model.safetensors")};
}

// Fraction of the packed 4-bit codes (the qweight tensors' nibbles) that
// agree across the two runs.
double SameCodes(const JobRun& a, const JobRun& b) {
  int64_t same = 0, all = 0;
  for (const auto& [name, t] : a.tensors) {
    if (!absl::EndsWith(name, ".qweight")) continue;
    const std::string& x = t.data;
    const std::string& y = b.tensors.at(name).data;
    if (x.size() != y.size()) return 0;
    for (size_t i = 0; i < x.size(); ++i) {
      same += (x[i] & 0x0f) == (y[i] & 0x0f);
      same += (x[i] & 0xf0) == (y[i] & 0xf0);
    }
    all += 2 * static_cast<int64_t>(x.size());
  }
  return all == 0 ? 0 : static_cast<double>(same) / all;
}

void ExpectSamePerplexity(const JobRun& cpu, const JobRun& cuda, double tolerance) {
  const json& a = cpu.report["evaluations"][0];
  const json& b = cuda.report["evaluations"][0];
  for (const char* k : {"perplexity_original", "perplexity_quantized"}) {
    const double x = a[k].get<double>(), y = b[k].get<double>();
    EXPECT_NEAR(y, x, tolerance * x) << k;
  }
}

class GpuPathTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    QAAS_REQUIRE_SHARED();
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
  ScopedTempDir dir_;
};

TEST_P(GpuPathTest, CudaArtifactMatchesTheCpuArtifact) {
  const std::string method = GetParam();
  const JobRun cpu = RunOn("cpu", method, dir_.path() + "/cpu");
  const JobRun cuda = RunOn("cuda", method, dir_.path() + "/cuda");
  ASSERT_FALSE(cpu.tensors.empty());
  ASSERT_EQ(cpu.tensors.size(), cuda.tensors.size());
  EXPECT_EQ(cuda.report["environment"]["device"], "cuda:0");
  EXPECT_GT(cuda.report["memory"]["peak_device_reserved_bytes"].get<uint64_t>(), 0u);
  const double same = SameCodes(cpu, cuda);
  if (method == "rtn") {
    EXPECT_GE(same, 0.9999);
    ExpectSamePerplexity(cpu, cuda, 1e-3);
  } else {
    EXPECT_GE(same, 0.99);
    ExpectSamePerplexity(cpu, cuda, 1e-2);
  }
  // Everything that is not a quantized linear is copied or computed the same.
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"}) {
    EXPECT_TRUE(RawToTensor(cpu.tensors.at(name)).equal(RawToTensor(cuda.tensors.at(name)))) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, GpuPathTest, ::testing::Values("rtn", "gptq"));

}  // namespace
}  // namespace qaas::quant
