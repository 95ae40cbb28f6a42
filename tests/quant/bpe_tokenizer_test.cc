#include "quant/model/bpe_tokenizer.h"

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/model/byte_level.h"
#include "quant/model/tokenizer.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using nlohmann::json;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

// FNV-1a 64 over the ids as 4-byte little-endian uint32s (the reference's formula).
std::string Fnv1a64(const std::vector<int>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int id : ids) {
    const uint32_t v = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) {
      h ^= (v >> (8 * b)) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  char hash[32];
  std::snprintf(hash, sizeof(hash), "0x%016llx", static_cast<unsigned long long>(h));
  return hash;
}

// A whole file's ids against a reference's summary of them: their number,
// the first and last ones, and the FNV-1a 64 hash of all.
void ExpectSameIds(const std::vector<int>& ids, size_t count, const std::vector<int>& first,
                   const std::vector<int>& last, const std::string& fnv1a64) {
  ASSERT_EQ(ids.size(), count);
  EXPECT_EQ(std::vector<int>(ids.begin(), ids.begin() + first.size()), first);
  EXPECT_EQ(std::vector<int>(ids.end() - last.size(), ids.end()), last);
  EXPECT_EQ(Fnv1a64(ids), fnv1a64);
}

void CopyFiles(const std::string& to, const std::vector<std::string>& names) {
  for (const auto& n : names) WriteLocalFile(to + "/" + n, ReadLocalFile(TinyOptDir() + "/" + n));
}

// The two file forms of the tiny OPT tokenizer, loaded through Tokenizer::Load
// from a directory holding only that form's files (as in the reference).
class ReferenceBpeTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ref_ = &OptReference()["tokenizer"]["forms"][GetParam()];
    CopyFiles(dir_.path(), (*ref_)["files"].get<std::vector<std::string>>());
    auto tok = Tokenizer::Load(dir_.path());
    QAAS_ASSERT_OK(tok);
    tok_ = *std::move(tok);
    bpe_ = dynamic_cast<const BpeTokenizer*>(tok_.get());
    ASSERT_NE(bpe_, nullptr) << "Tokenizer::Load did not pick the byte-level BPE tokenizer";
  }
  ScopedTempDir dir_;
  const json* ref_ = nullptr;
  std::unique_ptr<Tokenizer> tok_;
  const BpeTokenizer* bpe_ = nullptr;
};

TEST_P(ReferenceBpeTest, EveryCaseEncodesAsTransformersDoes) {
  ASSERT_GE((*ref_)["cases"].size(), 15u);
  for (const auto& c : (*ref_)["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    EXPECT_EQ(tok_->Encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int>>());
  }
}

TEST_P(ReferenceBpeTest, BosIsPrependedWhereTransformersAddsIt) {
  EXPECT_EQ(tok_->bos_id(), (*ref_)["bos_id"].get<int>());
  EXPECT_EQ(tok_->bos_id(), 2);  // </s>, as OPT
  EXPECT_EQ(tok_->eos_id(), (*ref_)["eos_id"].get<int>());
  EXPECT_EQ(tok_->vocab_size(), (*ref_)["vocab_size"].get<int>());
  // tokenizer.json's post-processor adds </s>; vocab.json + merges.txt with a
  // tokenizer_config.json that sets no add_bos_token do not.
  EXPECT_EQ(bpe_->add_bos(), GetParam() == "tokenizer.json");
  for (const auto& c : (*ref_)["cases"]) {
    std::vector<int> ids = tok_->Encode(c["text"].get<std::string>());
    if (bpe_->add_bos()) ids.insert(ids.begin(), tok_->bos_id());
    EXPECT_EQ(ids, c["ids_with_special_tokens"].get<std::vector<int>>()) << c["name"];
  }
}

TEST_P(ReferenceBpeTest, WholeTinyStoriesFileMatches) {
  QAAS_REQUIRE_SHARED();
  const auto& full = (*ref_)["full_file"];
  const std::string text = ReadLocalFile(TinyStoriesPath());
  ASSERT_EQ(text.size(), full["file_utf8_bytes"].get<size_t>());
  ExpectSameIds(tok_->Encode(text), full["num_ids"].get<size_t>(), full["first_ids"].get<std::vector<int>>(),
                full["last_ids"].get<std::vector<int>>(), full["fnv1a64"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(BothFileForms, ReferenceBpeTest,
                         ::testing::Values("tokenizer.json", "vocab.json+merges.txt"),
                         [](const auto& info) {
                           return info.param == "tokenizer.json" ? "TokenizerJson"
                                                                 : "VocabAndMerges";
                         });

json TinyTokenizerJson() { return json::parse(ReadLocalFile(TinyOptDir() + "/tokenizer.json")); }

TEST(BpeTokenizerTest, MergesWrittenAsStringsEncodeTheSame) {
  json j = TinyTokenizerJson();
  ASSERT_TRUE(j["model"]["merges"][0].is_array()) << "the reference stores [a, b] pairs";
  for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  ScopedTempDir dir;
  WriteLocalFile(dir.path() + "/tokenizer.json", j.dump());
  auto tok = BpeTokenizer::Load(dir.path());
  QAAS_ASSERT_OK(tok);
  for (const auto& c : OptReference()["tokenizer"]["forms"]["tokenizer.json"]["cases"]) {
    EXPECT_EQ((*tok)->Encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int>>())
        << c["name"];
  }
}

TEST(BpeTokenizerTest, SentencePieceModelStillWins) {
  // A directory with both forms is read as SentencePiece (LLaMA ships both).
  QAAS_REQUIRE_SHARED();
  ScopedTempDir dir;
  WriteLocalFile(dir.path() + "/tokenizer.model",
                 ReadLocalFile(Stories260kDir() + "/tokenizer.model"));
  CopyFiles(dir.path(), {"tokenizer.json"});
  auto tok = Tokenizer::Load(dir.path());
  QAAS_ASSERT_OK(tok);
  EXPECT_EQ(dynamic_cast<const BpeTokenizer*>(tok->get()), nullptr);
  EXPECT_EQ((*tok)->vocab_size(), 512);
}

// A hand-made byte-level tokenizer: vocab.json with `tokens` (ids in order)
// and merges.txt with `merges`, plus an optional tokenizer_config.json.
std::unique_ptr<BpeTokenizer> HandMade(const std::vector<std::string>& tokens,
                                       const std::vector<std::string>& merges,
                                       const json& config = json()) {
  ScopedTempDir dir;
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int>(i);
  WriteLocalFile(dir.path() + "/vocab.json", vocab.dump());
  std::string m = "#version: 0.2\n";
  for (const auto& s : merges) m += s + "\n";
  WriteLocalFile(dir.path() + "/merges.txt", m);
  if (!config.is_null()) WriteLocalFile(dir.path() + "/tokenizer_config.json", config.dump());
  auto tok = BpeTokenizer::Load(dir.path());
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(BpeTokenizerTest, LowerRankMergesFirst) {
  //                                    0    1    2    3     4     5
  auto bc_first = HandMade({"a", "b", "c", "ab", "bc", "abc"}, {"b c", "a b", "a bc"});
  ASSERT_NE(bc_first, nullptr);
  EXPECT_EQ(bc_first->Encode("abc"), (std::vector<int>{5}));  // b+c, then a+bc
  auto ab_first = HandMade({"a", "b", "c", "ab", "bc", "abc"}, {"a b", "b c", "a bc"});
  ASSERT_NE(ab_first, nullptr);
  EXPECT_EQ(ab_first->Encode("abc"), (std::vector<int>{3, 2}));  // a+b, and "ab c" is no merge
}

TEST(BpeTokenizerTest, EqualRanksMergeLeftmostFirst) {
  auto tok = HandMade({"a", "aa"}, {"a a"});
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("aaa"), (std::vector<int>{1, 0}));
  EXPECT_EQ(tok->Encode("aaaaa"), (std::vector<int>{1, 1, 0}));
  // Characters outside the vocabulary are dropped when there is no <unk>, as tokenizers does.
  EXPECT_EQ(tok->Encode("aXa"), (std::vector<int>{1}));
}

TEST(BpeTokenizerTest, WordsNeverMergeAcrossThePreTokenizer) {
  const std::string sp = ByteLevelAlphabet()[' '];  // "Ġ"
  auto tok = HandMade({"a", "b", sp, sp + "b", "ab", "a" + sp}, {"a b", sp + " b", "a " + sp});
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("ab"), (std::vector<int>{4}));
  EXPECT_EQ(tok->Encode("a b"), (std::vector<int>{0, 3}));  // "a" | " b": no "aĠ"
}

TEST(BpeTokenizerTest, SpecialTokensAreMatchedWholeAndAddPrefixSpaceIsHonoured) {
  const std::string sp = ByteLevelAlphabet()[' '];
  std::vector<std::string> tokens = {"<s>", "</s>", "<", ">", "/", "s", sp, "x", sp + "x"};
  auto tok =
      HandMade(tokens, {sp + " x"},
               {{"bos_token", {{"content", "<s>"}, {"lstrip", false}}}, {"eos_token", "</s>"}});
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_FALSE(tok->add_bos());
  EXPECT_EQ(tok->Encode("x</s><s> x"), (std::vector<int>{7, 1, 0, 8}));
  EXPECT_EQ(tok->Encode("</s"), (std::vector<int>{2, 4, 5}));

  auto prefixed =
      HandMade(tokens, {sp + " x"},
               {{"add_prefix_space", true}, {"add_bos_token", true}, {"bos_token", "</s>"}});
  ASSERT_NE(prefixed, nullptr);
  EXPECT_TRUE(prefixed->add_bos());
  EXPECT_EQ(prefixed->bos_id(), 1);
  EXPECT_EQ(prefixed->Encode("x x"), (std::vector<int>{8, 8}));
  EXPECT_EQ(prefixed->Encode("x</s>x"),
            (std::vector<int>{8, 1, 8}));  // each segment gets its space
}

TEST(BpeTokenizerTest, LongestAddedTokenWins) {
  json j = TinyTokenizerJson();
  j["added_tokens"].push_back(
      {{"id", 399}, {"content", "</s></s>"}, {"normalized", false}, {"special", true}});
  ScopedTempDir dir;
  WriteLocalFile(dir.path() + "/tokenizer.json", j.dump());
  auto tok = BpeTokenizer::Load(dir.path());
  QAAS_ASSERT_OK(tok);
  EXPECT_EQ((*tok)->Encode("</s></s></s>"), (std::vector<int>{399, 2}));
}

TEST(BpeTokenizerTest, GptTwoDefaultsToEndOfTextAndNoBos) {
  // GPT-2 ships vocab.json + merges.txt with <|endoftext|> and no special-token config.
  auto tok = HandMade({"a", "<|endoftext|>"}, {});
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_FALSE(tok->add_bos());
  EXPECT_EQ(tok->vocab_size(), 2);
  EXPECT_EQ(tok->Encode("a<|endoftext|>a"), (std::vector<int>{0, 1, 0}));
  auto none = HandMade({"a"}, {});
  ASSERT_NE(none, nullptr);
  EXPECT_EQ(none->bos_id(), -1);
}

TEST(BpeTokenizerTest, FeaturesWeDoNotRunAreUnimplementedNamingThem) {
  struct Case {
    const char* needle;
    std::function<void(json&)> edit;
  };
  const std::vector<Case> cases = {
      {"WordPiece", [](json& j) { j["model"]["type"] = "WordPiece"; }},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }},
      {"continuing_subword_prefix",
       [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }},
      {"byte_fallback", [](json& j) { j["model"]["byte_fallback"] = true; }},
      {"NFKC",
       [](json& j) {
         j["normalizer"] = {{"type", "NFKC"}};  // NFC runs (Qwen2); the others do not
       }},
      {"Metaspace",
       [](json& j) {
         j["pre_tokenizer"] = {{"type", "Metaspace"}};
       }},
      {"Whitespace", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }},
      {"Replace", [](json& j) { j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", "_"}}; }},
      {"use_regex", [](json& j) { j["pre_tokenizer"]["use_regex"] = false; }},
      {"lstrip", [](json& j) { j["added_tokens"][1]["lstrip"] = true; }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.needle);
    json j = TinyTokenizerJson();
    c.edit(j);
    ScopedTempDir dir;
    WriteLocalFile(dir.path() + "/tokenizer.json", j.dump());
    auto tok = Tokenizer::Load(dir.path());
    QAAS_EXPECT_CODE(tok, kUnimplemented);
    EXPECT_TRUE(MessageHas(tok, c.needle));
    EXPECT_TRUE(MessageHas(tok, "tokenizer.json"));
  }
}

TEST(BpeTokenizerTest, MalformedFilesAreInvalidArgumentNamingTheProblem) {
  struct Case {
    const char* needle;
    std::function<void(json&)> edit;
  };
  const std::vector<Case> cases = {
      {"missing 'model'", [](json& j) { j.erase("model"); }},
      {"model.vocab", [](json& j) { j["model"]["vocab"] = json::array(); }},
      {"'zz' is not in the vocabulary",
       [](json& j) {
         j["model"]["merges"].push_back({"zz", "a"});
       }},
      {"not two tokens", [](json& j) { j["model"]["merges"].push_back("a b c"); }},
      {"id of 'h'", [](json& j) { j["model"]["vocab"]["h"] = -4; }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.needle);
    json j = TinyTokenizerJson();
    c.edit(j);
    ScopedTempDir dir;
    WriteLocalFile(dir.path() + "/tokenizer.json", j.dump());
    auto tok = Tokenizer::Load(dir.path());
    QAAS_EXPECT_CODE(tok, kInvalidArgument);
    EXPECT_TRUE(MessageHas(tok, c.needle));
  }

  ScopedTempDir garbage;
  WriteLocalFile(garbage.path() + "/tokenizer.json", "{not json");
  auto tok = Tokenizer::Load(garbage.path());
  QAAS_EXPECT_CODE(tok, kInvalidArgument);
  EXPECT_TRUE(MessageHas(tok, "tokenizer.json"));

  ScopedTempDir bad_merges;
  CopyFiles(bad_merges.path(), {"vocab.json"});
  WriteLocalFile(bad_merges.path() + "/merges.txt", "#version: 0.2\n\xc4\xa0 t\nh e x\n");
  tok = Tokenizer::Load(bad_merges.path());
  QAAS_EXPECT_CODE(tok, kInvalidArgument);
  EXPECT_TRUE(MessageHas(tok, "merges.txt: line 3"));

  ScopedTempDir bad_bos;
  CopyFiles(bad_bos.path(), {"vocab.json", "merges.txt"});
  WriteLocalFile(bad_bos.path() + "/tokenizer_config.json", R"({"bos_token": "<|begin|>"})");
  tok = Tokenizer::Load(bad_bos.path());
  QAAS_EXPECT_CODE(tok, kInvalidArgument);
  EXPECT_TRUE(MessageHas(tok, "<|begin|>"));
}

TEST(BpeTokenizerTest, VocabWithoutMergesIsNotFound) {
  ScopedTempDir dir;
  CopyFiles(dir.path(), {"vocab.json"});
  auto tok = Tokenizer::Load(dir.path());
  QAAS_EXPECT_CODE(tok, kNotFound);
  EXPECT_TRUE(MessageHas(tok, "merges.txt"));
  QAAS_EXPECT_CODE(BpeTokenizer::Load(dir.path()), kNotFound);
}

// Llama 3's and Qwen2's tokenizer.json pipelines (Split with the family's
// regex + ByteLevel without regex; Qwen2's NFC normalizer; Llama 3's
// ignore_merges) and the SentencePiece-style ones of Llama 2 (Prepend +
// Replace normalizer), Gemma (Replace, Split(" ", MergedWithPrevious)), the
// Metaspace conversion (prepend "first") and that Split acting alone, all
// with byte fallback, trained by the tokenizers package with those exact
// settings (scripts/reference/make_family_tokenizers.py): ids equal to its
// own on a Unicode torture list and on whole files of ../shared/data.
class FamilyTokenizerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static const json* reference =
        new json(json::parse(ReadLocalFile(ReferencePath("family_tokenizer_reference.json"))));
    texts_ = &(*reference)["texts"];
    ref_ = &(*reference)["families"][GetParam()];
    auto tok = Tokenizer::Load(ReferencePath("tokenizers/" + GetParam()));
    QAAS_ASSERT_OK(tok);
    tok_ = *std::move(tok);
    ASSERT_NE(dynamic_cast<const BpeTokenizer*>(tok_.get()), nullptr);
  }
  const json* texts_ = nullptr;
  const json* ref_ = nullptr;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(FamilyTokenizerTest, TortureTextsEncodeAsTokenizersDoes) {
  ASSERT_GE(texts_->size(), 15u);
  EXPECT_EQ(tok_->bos_id(), (*ref_)["bos_id"].get<int>());
  for (size_t i = 0; i < texts_->size(); ++i) {
    const std::string text = (*texts_)[i].get<std::string>();
    SCOPED_TRACE(text);
    EXPECT_EQ(tok_->Encode(text), (*ref_)["texts"][i].get<std::vector<int>>());
  }
}

TEST_P(FamilyTokenizerTest, WholeSharedFilesEncodeAsTokenizersDoes) {
  QAAS_REQUIRE_SHARED();
  for (const auto& [name, want] : (*ref_)["files"].items()) {
    SCOPED_TRACE(name);
    ExpectSameIds(tok_->Encode(ReadLocalFile(::qaas::testing::SharedDir() + "/data/" + name)),
                  want["count"].get<size_t>(), want["first"].get<std::vector<int>>(),
                  want["last"].get<std::vector<int>>(), want["fnv1a64"].get<std::string>());
  }
}

TEST(FamilyTokenizerFilesTest, OtherPipelinesAreRefusedNamingThem) {
  const json base = json::parse(ReadLocalFile(ReferencePath("tokenizers/llama3/tokenizer.json")));
  struct Case {
    const char* what;
    std::function<void(json&)> mutate;
    const char* needle;
  };
  for (const Case& c : std::vector<Case>{
           {"NFKC", [](json& j) { j["normalizer"] = {{"type", "NFKC"}}; }, "NFKC"},
           {"Split Removed", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
            "Removed"},
           {"ByteLevel with regex after Split",
            [](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true; }, "use_regex"},
           {"Metaspace", [](json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }, "Metaspace"},
           {"bad regex", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?<"; },
            "does not compile"}}) {
    SCOPED_TRACE(c.what);
    ScopedTempDir dir;
    json j = base;
    c.mutate(j);
    WriteLocalFile(dir.path() + "/tokenizer.json", j.dump());
    WriteLocalFile(dir.path() + "/tokenizer_config.json",
                   ReadLocalFile(ReferencePath("tokenizers/llama3/tokenizer_config.json")));
    auto tok = Tokenizer::Load(dir.path());
    EXPECT_FALSE(tok.ok());
    EXPECT_TRUE(MessageHas(tok, c.needle)) << tok.status();
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyTokenizerTest,
                         ::testing::Values("llama3", "qwen2", "llama2", "gemma", "metaspace", "spacesplit"));

}  // namespace
}  // namespace qaas::quant
