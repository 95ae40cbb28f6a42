// Helpers for the quant/ tests: status-message checks, scheme parsing,
// reading whole safetensors files, and paths of the reference data. Header-only.
#ifndef QAAS_TESTS_QUANT_QUANT_TEST_UTIL_H_
#define QAAS_TESTS_QUANT_QUANT_TEST_UTIL_H_

#include <filesystem>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/model/safetensors.h"
#include "quant/model/sentencepiece_model.h"
#include "quant/model/tokenizer.h"
#include "quant/scheme.h"
#include "tests/test_util.h"

namespace qaas::quant {

// Passes when the status is an error whose message contains `needle`.
inline ::testing::AssertionResult MessageHas(const absl::Status& status, absl::string_view needle) {
  if (status.ok()) return ::testing::AssertionFailure() << "status is OK, wanted an error naming '" << needle << "'";
  if (absl::StrContains(status.message(), needle)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "message of " << status << " does not contain '" << needle << "'";
}
template <typename T>
::testing::AssertionResult MessageHas(const absl::StatusOr<T>& s, absl::string_view needle) {
  return MessageHas(s.status(), needle);
}

// The scheme `s` names; a test failure (and an empty scheme) when it does not parse.
inline Scheme MustParse(const std::string& s) {
  auto scheme = ParseScheme(s);
  EXPECT_TRUE(scheme.ok()) << scheme.status();
  return scheme.ok() ? *scheme : Scheme{};
}

// Every tensor of a safetensors file, by name; test failures for read errors.
inline std::map<std::string, RawTensor> ReadAll(const std::string& path) {
  std::map<std::string, RawTensor> out;
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return out;
  auto tensors = (*f)->ReadAll();
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  if (!tensors.ok()) return out;
  for (auto& t : *tensors) out[t.name] = std::move(t);
  return out;
}

inline std::string ReferencePath(absl::string_view name) {
  return std::string(QAAS_SOURCE_DIR) + "/tests/data/" + std::string(name);
}

// The small random OPT checkpoint and the values Transformers computed for it
// (scripts/reference/make_opt_references.py).
inline std::string TinyOptDir() { return ReferencePath("tiny-opt"); }
inline const nlohmann::json& OptReference() {
  static const nlohmann::json* j = new nlohmann::json(
      nlohmann::json::parse(::qaas::testing::ReadLocalFile(ReferencePath("opt_reference.json"))));
  return *j;
}

inline std::string Stories260kDir() { return ::qaas::testing::SharedDir() + "/models/stories260k"; }
inline std::string TinyStoriesPath() {
  return ::qaas::testing::SharedDir() + "/data/tinystories/valid-sample.txt";
}

// Text for training the tokenizers of random test models.
inline const char* kTinyText =
    "Once upon a time there was a little girl named Lily. She liked to play in the park with her "
    "dog. One day the sun was hot and Lily was happy. The dog ran to the tree and Lily ran after "
    "him. They played all day and then they went home to eat cake with mom and dad.\n";

// A copy of tests/data/<name> at `dir` that runs on kTinyText: a model
// without a tokenizer of its own (the LLaMA-like families' test checkpoints)
// gets a BPE one trained on it.
inline void CopyModelForTinyText(const std::string& name, const std::string& dir) {
  std::filesystem::copy(ReferencePath(name), dir, std::filesystem::copy_options::recursive);
  if (std::filesystem::exists(dir + "/vocab.json")) return;
  auto sp = TrainBpeModel(kTinyText, 320);
  ASSERT_TRUE(sp.ok()) << sp.status();
  ::qaas::testing::WriteLocalFile(dir + "/tokenizer.model", SerializeSentencePieceModel(*sp));
  ::qaas::testing::WriteLocalFile(dir + "/tokenizer_config.json",
                                  R"({"tokenizer_class": "LlamaTokenizer", "add_bos_token": true, "add_eos_token": false})");
}

// kTinyText eight times over, at `path`: calibration and evaluation text.
inline void WriteTinyText(const std::string& path) {
  std::string text;
  for (int i = 0; i < 8; ++i) text += kTinyText;
  ::qaas::testing::WriteLocalFile(path, text);
}

}  // namespace qaas::quant

#endif  // QAAS_TESTS_QUANT_QUANT_TEST_UTIL_H_
