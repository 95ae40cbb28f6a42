#include "quant/data/text_dataset.h"

#include <ATen/ATen.h>

#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

std::vector<int> Iota(int n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST(LoadDatasetTextTest, PlainTextIsReturnedVerbatim) {
  ScopedTempDir dir;
  const std::string text = "  First line.\n\nSecond line, caf\xc3\xa9.\r\n";
  WriteLocalFile(dir.path() + "/d.txt", text);
  auto got = LoadDatasetText(dir.path() + "/d.txt");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, text);
}

TEST(LoadDatasetTextTest, JsonlTextsAreJoinedWithBlankLines) {
  ScopedTempDir dir;
  WriteLocalFile(dir.path() + "/d.jsonl",
                 "{\"text\": \"one\\nline\", \"id\": 1}\n"
                 "\n"
                 "   \r\n"
                 "{\"text\": \"two \\u00e9\"}\r\n"
                 "{\"meta\": {}, \"text\": \"three\"}");  // no final newline
  auto got = LoadDatasetText(dir.path() + "/d.jsonl");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "one\nline\n\ntwo \xc3\xa9\n\nthree");
}

TEST(LoadDatasetTextTest, MalformedJsonlLineIsInvalidArgumentNamingIt) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/d.jsonl";
  for (const std::string bad : {"{\"text\": \"unterminated}", "[\"text\"]", "{\"body\": \"x\"}",
                                "{\"text\": 42}"}) {
    SCOPED_TRACE(bad);
    WriteLocalFile(path, "{\"text\": \"ok\"}\n\n" + bad + "\n{\"text\": \"fine\"}\n");
    auto got = LoadDatasetText(path);
    QAAS_EXPECT_CODE(got, kInvalidArgument);
    EXPECT_TRUE(MessageHas(got, "line 3"));
    EXPECT_TRUE(MessageHas(got, path));
  }
}

TEST(LoadDatasetTextTest, EmptyDatasetsAreInvalidArgument) {
  ScopedTempDir dir;
  for (const auto& [name, content] : std::vector<std::pair<std::string, std::string>>{
           {"empty.txt", ""}, {"blank.txt", " \n\t\r\n"}, {"empty.jsonl", ""},
           {"empty-texts.jsonl", "{\"text\": \"\"}\n{\"text\": \"  \"}\n"}}) {
    SCOPED_TRACE(name);
    WriteLocalFile(dir.path() + "/" + name, content);
    auto got = LoadDatasetText(dir.path() + "/" + name);
    QAAS_EXPECT_CODE(got, kInvalidArgument);
    EXPECT_TRUE(MessageHas(got, "empty"));
  }
}

TEST(LoadDatasetTextTest, MissingFileIsNotFound) {
  ScopedTempDir dir;
  auto got = LoadDatasetText(dir.path() + "/absent.txt");
  QAAS_EXPECT_CODE(got, kNotFound);
  EXPECT_TRUE(MessageHas(got, "absent.txt"));
}

TEST(SampleCalibrationWindowsTest, WindowsAreContiguousRunsAtSeededOffsets) {
  const std::vector<int> tokens = Iota(1000);
  auto a = SampleCalibrationWindows(tokens, 16, 64, 42);
  QAAS_ASSERT_OK(a);
  EXPECT_EQ(a->sizes().vec(), (std::vector<int64_t>{16, 64}));
  EXPECT_EQ(a->scalar_type(), at::kLong);
  // Token i is i, so each window counts up from its start.
  at::Tensor starts = a->select(1, 0);
  EXPECT_TRUE(a->equal(starts.unsqueeze(1) + at::arange(64, at::TensorOptions().dtype(at::kLong))));
  EXPECT_GE(starts.min().item<int64_t>(), 0);
  EXPECT_LE(starts.max().item<int64_t>(), 1000 - 64 - 1);
  EXPECT_GT(std::get<0>(at::_unique(starts)).numel(), 8) << "offsets should be spread out";

  // GPTQ's protocol with std::mt19937_64: reproducible across platforms.
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<size_t> start(0, 1000 - 64 - 1);
  for (int s = 0; s < 16; ++s) EXPECT_EQ(starts[s].item<int64_t>(), static_cast<int64_t>(start(rng))) << s;
}

TEST(SampleCalibrationWindowsTest, DeterministicPerSeed) {
  const std::vector<int> tokens = Iota(5000);
  auto a = SampleCalibrationWindows(tokens, 8, 128, 1);
  auto b = SampleCalibrationWindows(tokens, 8, 128, 1);
  auto c = SampleCalibrationWindows(tokens, 8, 128, 2);
  QAAS_ASSERT_OK(a);
  QAAS_ASSERT_OK(b);
  QAAS_ASSERT_OK(c);
  EXPECT_TRUE(a->equal(*b));
  EXPECT_FALSE(a->equal(*c));
}

TEST(SampleCalibrationWindowsTest, TooShortTextIsInvalidArgument) {
  auto got = SampleCalibrationWindows(Iota(64), 4, 64, 0);  // needs seq_len + 1 tokens
  QAAS_EXPECT_CODE(got, kInvalidArgument);
  EXPECT_TRUE(MessageHas(got, "64 tokens"));
  EXPECT_TRUE(MessageHas(got, "65"));
  auto just = SampleCalibrationWindows(Iota(65), 4, 64, 0);
  QAAS_ASSERT_OK(just);
  EXPECT_TRUE(just->select(1, 0).eq(0).all().item<bool>());  // one possible offset
  QAAS_EXPECT_CODE(SampleCalibrationWindows({}, 1, 8, 0), kInvalidArgument);
  QAAS_EXPECT_CODE(SampleCalibrationWindows(Iota(100), 0, 8, 0), kInvalidArgument);
  QAAS_EXPECT_CODE(SampleCalibrationWindows(Iota(100), 2, 0, 0), kInvalidArgument);
}

TEST(MakeEvaluationWindowsTest, DropsTheRemainderAndHonoursMaxWindows) {
  const std::vector<int> tokens = Iota(1030);
  auto all = MakeEvaluationWindows(tokens, 100, 0);
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(all->sizes().vec(), (std::vector<int64_t>{10, 100}));
  EXPECT_EQ(all->scalar_type(), at::kLong);
  EXPECT_TRUE(all->flatten().equal(at::arange(1000, at::TensorOptions().dtype(at::kLong))));

  auto three = MakeEvaluationWindows(tokens, 100, 3);
  QAAS_ASSERT_OK(three);
  EXPECT_EQ(three->size(0), 3);
  EXPECT_TRUE(three->equal(all->narrow(0, 0, 3)));

  auto more = MakeEvaluationWindows(tokens, 100, 50);
  QAAS_ASSERT_OK(more);
  EXPECT_EQ(more->size(0), 10);

  auto exact = MakeEvaluationWindows(Iota(300), 100, 0);
  QAAS_ASSERT_OK(exact);
  EXPECT_EQ(exact->size(0), 3);
}

TEST(MakeEvaluationWindowsTest, TooFewTokensOrTinyWindowsAreInvalidArgument) {
  auto got = MakeEvaluationWindows(Iota(99), 100, 0);
  QAAS_EXPECT_CODE(got, kInvalidArgument);
  EXPECT_TRUE(MessageHas(got, "99 tokens"));
  QAAS_EXPECT_CODE(MakeEvaluationWindows(Iota(100), 1, 0), kInvalidArgument);
  QAAS_EXPECT_CODE(MakeEvaluationWindows(Iota(100), 0, 0), kInvalidArgument);
}

}  // namespace
}  // namespace qaas::quant
