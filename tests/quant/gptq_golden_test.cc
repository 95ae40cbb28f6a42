// QuantizeGptq against an independent float64 GPTQ written from the paper
// (scripts/reference/make_gptq_golden.py, output in tests/data/gptq_golden.json):
// the same layer (W 16x64 with one dead input, H from 384 tokens with channel
// scales spread over two decades), lazy blocks of 32 and groups of 16 so that
// half of the groups begin inside a block; per channel, groups under both
// GroupParamsFrom variants, act-order, static groups; 2, 3 and 4 bits,
// symmetric and asymmetric.
//
// Tolerances (ours runs in float32, the reference in float64). The weights a
// code is rounded from differ by about 1e-6 relative after the error feedback,
// so a code can flip only where w / scale lies within ~1e-6 of a rounding
// boundary: we allow at most 1% of a case's codes to differ, each by at most
// one step (in practice all are equal). Scales are float16 values computed
// from nearly equal ranges, so they are equal or one float16 step apart:
// relative difference at most 2^-10. Zero points (integers) at most 1 apart.
// A broken damping, act-order permutation, group-parameter source or error
// feedback changes 10-20% of the codes (the two variants already differ in
// 13-17% of them), far beyond these limits.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "quant/methods/gptq.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

constexpr double kMaxCodesOff = 0.01;  // fraction of codes allowed to differ (by one)
constexpr double kMaxScaleRel = 1.0 / 1024.0 + 1e-9;  // one float16 step
constexpr double kMaxDampRel = 1e-5;                  // float32 vs float64 mean of diag(H)

const nlohmann::json& Golden() {
  static const nlohmann::json* j = new nlohmann::json(
      nlohmann::json::parse(::qaas::testing::ReadLocalFile(ReferencePath("gptq_golden.json"))));
  return *j;
}

const nlohmann::json& Case(const std::string& name) {
  for (const auto& c : Golden()["cases"]) {
    if (c["name"] == name) return c;
  }
  ADD_FAILURE() << "no case " << name;
  static const nlohmann::json empty;
  return empty;
}

std::vector<std::string> CaseNames() {
  std::vector<std::string> names;
  for (const auto& c : Golden()["cases"]) names.push_back(c["name"].get<std::string>());
  return names;
}

// A [rows, cols] (or [n]) JSON array of numbers as a tensor of type t.
at::Tensor ToTensor(const nlohmann::json& j, at::ScalarType t) {
  std::vector<double> v;
  std::vector<int64_t> shape = {static_cast<int64_t>(j.size())};
  if (!j.empty() && j[0].is_array()) {
    shape.push_back(static_cast<int64_t>(j[0].size()));
    for (const auto& row : j) {
      for (const auto& x : row) v.push_back(x.get<double>());
    }
  } else {
    for (const auto& x : j) v.push_back(x.get<double>());
  }
  return at::tensor(v, at::TensorOptions().dtype(at::kDouble)).reshape(shape).to(t);
}

TensorQuant SpecOf(const nlohmann::json& c) {
  TensorQuant t;
  t.format = NumberFormat::kInt;
  t.bits = c["bits"].get<int>();
  t.symmetric = c["symmetric"].get<bool>();
  t.group_size = c["group_size"].get<int>();
  t.granularity = t.group_size > 0 ? Granularity::kPerGroup : Granularity::kPerChannel;
  return t;
}

GptqOptions OptionsOf(const nlohmann::json& c) {
  GptqOptions o;
  o.percdamp = c["percdamp"].get<double>();
  o.blocksize = c["blocksize"].get<int>();
  o.act_order = c["act_order"].get<bool>();
  o.static_groups = c["static_groups"].get<bool>();
  o.group_params_from = c["group_params_from"] == "block_start" ? GroupParamsFrom::kBlockStart
                                                                : GroupParamsFrom::kUpdated;
  return o;
}

struct Agreement {
  double codes_equal = 0;  // fraction
  int max_code_diff = 0;
  double max_scale_rel = 0;
  int max_zero_diff = 0;
  bool g_idx_equal = false;
};

Agreement Compare(const QuantizedLinear& q, const nlohmann::json& c) {
  Agreement a;
  at::Tensor codes = ToTensor(c["codes"], at::kLong);
  at::Tensor diff = (q.codes.to(at::kLong) - codes).abs();
  a.codes_equal = diff.eq(0).to(at::kDouble).mean().item<double>();
  a.max_code_diff = static_cast<int>(diff.max().item<int64_t>());
  at::Tensor scales = ToTensor(c["scales"], at::kDouble);
  at::Tensor zeros = ToTensor(c["zeros"], at::kDouble);
  if (q.params.scale.sizes() == scales.sizes() && q.params.zero.sizes() == zeros.sizes()) {
    a.max_scale_rel =
        ((q.params.scale.to(at::kDouble) - scales).abs() / scales).max().item<double>();
    a.max_zero_diff =
        static_cast<int>((q.params.zero.to(at::kDouble) - zeros).abs().max().item<double>());
  } else {
    ADD_FAILURE() << "scale " << q.params.scale.sizes() << " zero " << q.params.zero.sizes()
                  << ", expected " << scales.sizes();
    a.max_scale_rel = INFINITY;
  }
  a.g_idx_equal = at::equal(q.g_idx.to(at::kLong), ToTensor(c["g_idx"], at::kLong));
  return a;
}

void ExpectAgrees(const Agreement& a, const std::string& what) {
  EXPECT_GE(a.codes_equal, 1.0 - kMaxCodesOff) << what;
  EXPECT_LE(a.max_code_diff, 1) << what;
  EXPECT_LE(a.max_scale_rel, kMaxScaleRel) << what;
  EXPECT_LE(a.max_zero_diff, 1) << what;
  EXPECT_TRUE(a.g_idx_equal) << what;
}

class GptqGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    W_ = ToTensor(Golden()["W"], at::kFloat);
    H_ = ToTensor(Golden()["H"], at::kFloat);
  }
  at::Tensor W_, H_;
};

TEST_P(GptqGolden, MatchesTheFloat64Reference) {
  const nlohmann::json& c = Case(GetParam());
  GptqStats stats;
  auto q = QuantizeGptq(W_, H_, SpecOf(c), OptionsOf(c), &stats);
  QAAS_ASSERT_OK(q);
  EXPECT_EQ(stats.dead_columns, static_cast<int>(Golden()["dead_columns"].size()));
  EXPECT_EQ(stats.cholesky_retries, 0);
  const double damp_rel = std::abs(stats.damp / c["damp"].get<double>() - 1);
  EXPECT_LE(damp_rel, kMaxDampRel);
  const Agreement a = Compare(*q, c);
  std::cout << std::left << std::setw(36) << GetParam() << std::right << std::fixed
            << " codes equal " << std::setprecision(4) << a.codes_equal << ", max code diff "
            << a.max_code_diff << ", max scale rel diff " << std::scientific << std::setprecision(2)
            << a.max_scale_rel << ", max zero diff " << a.max_zero_diff << ", damp rel diff "
            << damp_rel << std::defaultfloat << "\n";
  ExpectAgrees(a, GetParam());
}

// kUpdated is Algorithm 1 without lazy batching: any block size gives the
// same result, also when groups run past a block's end (16-wide groups in
// blocks of 24 or 40) or blocks are single columns.
TEST_P(GptqGolden, UpdatedGridsDoNotDependOnTheBlockSize) {
  const nlohmann::json& c = Case(GetParam());
  if (c["group_params_from"] != "updated" && c["group_size"] != 0 && !c["static_groups"]) {
    GTEST_SKIP() << "block_start grids depend on the block size";
  }
  for (int blocksize : {1, 24, 40, 64}) {
    GptqOptions o = OptionsOf(c);
    o.blocksize = blocksize;
    auto q = QuantizeGptq(W_, H_, SpecOf(c), o);
    QAAS_ASSERT_OK(q);
    ExpectAgrees(Compare(*q, c), GetParam() + " with blocksize " + std::to_string(blocksize));
  }
}

INSTANTIATE_TEST_SUITE_P(Gptq, GptqGolden, ::testing::ValuesIn(CaseNames()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// The reference is not blind to the variant: each case's expected codes are
// far from those of the other variant, wherever a group begins inside a block.
TEST(GptqGoldenData, VariantsDifferWhereGroupsBeginInsideABlock) {
  const at::Tensor a = ToTensor(Case("w4_asym_g16_updated")["codes"], at::kLong);
  const at::Tensor b = ToTensor(Case("w4_asym_g16_block_start")["codes"], at::kLong);
  EXPECT_LT(a.eq(b).to(at::kDouble).mean().item<double>(), 0.95);
  // Groups 0 and 2 begin a block: the same grids, and the same codes up to
  // the first group that begins inside one.
  EXPECT_TRUE(at::equal(a.narrow(1, 0, 16), b.narrow(1, 0, 16)));
}

}  // namespace
}  // namespace qaas::quant
