// A random 2-layer LLaMA and a small text, for pipeline tests that need no
// real model. Header-only.
#ifndef QAAS_TESTS_QUANT_RANDOM_MODEL_FIXTURE_H_
#define QAAS_TESTS_QUANT_RANDOM_MODEL_FIXTURE_H_

#include <string>

#include "gtest/gtest.h"
#include "quant/model/random_model.h"
#include "quant/pipeline.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {

class RandomModelPipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RandomModelOptions m;
    m.tokenizer_text = kTinyText;
    m.seed = 3;
    QAAS_ASSERT_OK(WriteRandomLlama(m, model_dir()));
    std::string text;
    for (int i = 0; i < 6; ++i) text += kTinyText;
    ::qaas::testing::WriteLocalFile(text_path(), text);
  }
  std::string model_dir() const { return dir_.path() + "/model"; }
  std::string text_path() const { return dir_.path() + "/text.txt"; }
  // W4A16g128 RTN, 2 calibration windows of 32 tokens, 2 evaluation windows of 64.
  PipelineOptions Options() const {
    PipelineOptions o;
    o.model_dir = model_dir();
    o.output_dir = dir_.path() + "/out";
    o.scheme = MustParse("W4A16g128");
    o.calibration = DatasetRef{text_path(), "calib", 32, 0};
    o.num_samples = 2;
    o.evaluations = {DatasetRef{text_path(), "eval", 64, 2}};
    return o;
  }
  ::qaas::testing::ScopedTempDir dir_;
};

}  // namespace qaas::quant

#endif  // QAAS_TESTS_QUANT_RANDOM_MODEL_FIXTURE_H_
