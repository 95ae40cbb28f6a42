// The weight quantizers behind one interface: every weight-quantizer row of
// the method table has one (a new row without one fails here, instead of a
// recipe naming it silently running another method), each says what the
// pipeline must gather for it, and through the interface each gives exactly
// what its method's function gives.
#include "quant/weight_quantizer.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "quant/methods/gptq.h"
#include "quant/methods/rtn.h"
#include "tests/quant/quant_test_util.h"

namespace qaas::quant {
namespace {

TEST(WeightQuantizerTest, EveryWeightQuantizerRowHasOneAndTransformsHaveNone) {
  const Scheme scheme = MustParse("W4A16g32");
  int rows = 0;
  for (const MethodSpec& m : Methods()) {
    SCOPED_TRACE(m.name);
    auto q = MakeWeightQuantizer(RecipeStep{m.name, {}}, scheme);
    if (m.kind == MethodKind::kWeightQuantizer) {
      ++rows;
      QAAS_ASSERT_OK(q);
      EXPECT_EQ((*q)->name().rfind(m.name, 0), 0u) << (*q)->name();
    } else {
      QAAS_EXPECT_CODE(q, kUnimplemented);
      EXPECT_TRUE(MessageHas(q, m.name));
    }
  }
  EXPECT_GE(rows, 4);  // rtn, gptq, adadim, omniquant at least
}

TEST(WeightQuantizerTest, EachSaysWhatThePipelineGathers) {
  const Scheme scheme = MustParse("W4A16g32");
  auto make = [&](RecipeStep step) {
    auto q = MakeWeightQuantizer(step, scheme);
    EXPECT_TRUE(q.ok()) << q.status();
    return q.ok() ? *std::move(q) : nullptr;
  };
  auto rtn = make({"rtn", {}});
  EXPECT_FALSE(rtn->Sequential());
  EXPECT_FALSE(rtn->NeedsHessians());
  auto gptq = make({"gptq", {}});
  EXPECT_TRUE(gptq->Sequential());
  EXPECT_TRUE(gptq->NeedsHessians());
  auto adadim = make({"adadim", {}});
  EXPECT_EQ(adadim->name(), "adadim-rtn");
  EXPECT_TRUE(adadim->Sequential());
  EXPECT_FALSE(adadim->NeedsHessians());  // RTN's candidates need no Hessian
  EXPECT_GT(adadim->SampleWindows(), 0);
  EXPECT_TRUE(adadim->WantsDequantizedCopy());
  RecipeStep adadim_gptq{"adadim", {}};
  adadim_gptq.Set("base", "gptq");
  EXPECT_TRUE(make(adadim_gptq)->NeedsHessians());
  EXPECT_EQ(make(adadim_gptq)->name(), "adadim-gptq");
  auto omniquant = make({"omniquant", {}});
  EXPECT_TRUE(omniquant->LearnsBlock());
  EXPECT_FALSE(rtn->LearnsBlock());
  // Learning before LearnBlock ran: an error, not a silent RTN.
  LinearToQuantize linear;
  linear.weight = at::randn({8, 16});
  nlohmann::json details;
  QAAS_EXPECT_CODE(omniquant->Quantize({}, linear, &details), kInternal);
}

TEST(WeightQuantizerTest, RefusesOptionsItsMethodRefuses) {
  RecipeStep step{"omniquant", {}};
  step.Set("lwc_lr", 0.0);
  auto q = MakeWeightQuantizer(step, MustParse("W4A16g32"));
  QAAS_EXPECT_CODE(q, kInvalidArgument);
  EXPECT_TRUE(MessageHas(q, "lwc_lr"));
}

TEST(WeightQuantizerTest, GivesWhatTheMethodGives) {
  at::manual_seed(3);
  const Scheme scheme = MustParse("W3A16g16");
  LinearToQuantize linear;
  linear.weight = at::randn({24, 32});
  const at::Tensor x = at::randn({256, 32});
  HessianAccumulator h(32, at::kCPU);
  h.Add(x);
  linear.hessian = h.H();
  nlohmann::json details;

  auto rtn = MakeWeightQuantizer({"rtn", {}}, scheme);
  QAAS_ASSERT_OK(rtn);
  auto q = (*rtn)->Quantize({}, linear, &details);
  QAAS_ASSERT_OK(q);
  EXPECT_TRUE(at::equal(q->codes, QuantizeRtn(linear.weight, scheme.weights).codes));

  RecipeStep step{"gptq", {}};
  step.Set("act_order", true);
  auto gptq = MakeWeightQuantizer(step, scheme);
  QAAS_ASSERT_OK(gptq);
  q = (*gptq)->Quantize({}, linear, &details);
  QAAS_ASSERT_OK(q);
  auto direct = QuantizeGptq(linear.weight, linear.hessian, scheme.weights, GptqOptionsOf(step));
  QAAS_ASSERT_OK(direct);
  EXPECT_TRUE(at::equal(q->codes, direct->codes));
  EXPECT_TRUE(at::equal(q->dequantized, direct->dequantized));
  EXPECT_GT(details["damp"].get<double>(), 0);  // what the report records of GPTQ
}

}  // namespace
}  // namespace qaas::quant
