#include "quant/model/tokenizer.h"

#include <cstdint>
#include <cstdio>
#include <set>
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/model/sentencepiece_model.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::SharedDir;
using ::qaas::testing::WriteLocalFile;

const nlohmann::json& Reference() {
  static const nlohmann::json* j =
      new nlohmann::json(nlohmann::json::parse(ReadLocalFile(ReferencePath("tokenizer_reference.json"))));
  return *j;
}

// Directory of the tokenizer called `name` in tokenizer_reference.json.
std::string TokenizerDir(const std::string& name) {
  return SharedDir() + (name == "llama2" ? "/models/llama2-tokenizer" : "/models/stories260k");
}

// FNV-1a 64 over the ids as 4-byte little-endian uint32s (the reference's formula).
uint64_t Fnv1a64(const std::vector<int>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int id : ids) {
    const uint32_t v = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) {
      h ^= (v >> (8 * b)) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

// The text a model's pieces spell (byte pieces as their bytes, the whitespace
// mark as a space, the dummy prefix dropped): Decode as SentencePiece does.
std::string Decode(const SentencePieceModel& m, const std::vector<int>& ids) {
  std::string bytes;
  for (int id : ids) {
    const auto& p = m.pieces.at(static_cast<size_t>(id));
    if (p.type == SentencePieceModel::PieceType::kByte) {
      unsigned v = 0;
      std::sscanf(p.piece.c_str(), "<0x%02X>", &v);
      bytes.push_back(static_cast<char>(v));
    } else {
      bytes += p.piece;
    }
  }
  std::string out;
  const std::string mark = "\xe2\x96\x81";
  for (size_t i = 0; i < bytes.size();) {
    if (bytes.compare(i, mark.size(), mark) == 0) {
      out.push_back(' ');
      i += mark.size();
    } else {
      out.push_back(bytes[i++]);
    }
  }
  if (m.add_dummy_prefix && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

class ReferenceTokenizerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    QAAS_REQUIRE_SHARED();
    ref_ = &Reference()["tokenizers"][GetParam()];
    auto tok = Tokenizer::Load(TokenizerDir(GetParam()));
    QAAS_ASSERT_OK(tok);
    tok_ = *std::move(tok);
  }
  const nlohmann::json* ref_ = nullptr;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(ReferenceTokenizerTest, EveryCaseEncodesAsSentencePieceDoes) {
  ASSERT_GE((*ref_)["cases"].size(), 8u);
  for (const auto& c : (*ref_)["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::vector<int> want = c["ids"].get<std::vector<int>>();
    EXPECT_EQ(tok_->Encode(c["text"].get<std::string>()), want);
  }
}

TEST_P(ReferenceTokenizerTest, SpecialIdsAndVocabSize) {
  EXPECT_EQ(tok_->bos_id(), (*ref_)["bos_id"].get<int>());
  EXPECT_EQ(tok_->eos_id(), (*ref_)["eos_id"].get<int>());
  EXPECT_EQ(tok_->vocab_size(), (*ref_)["vocab_size"].get<int>());
}

TEST_P(ReferenceTokenizerTest, WholeTinyStoriesFileMatches) {
  const auto& full = (*ref_)["full_file"];
  const std::string text = ReadLocalFile(TinyStoriesPath());
  ASSERT_EQ(text.size(), full["file_utf8_bytes"].get<size_t>());
  const std::vector<int> ids = tok_->Encode(text);
  ASSERT_EQ(ids.size(), full["num_ids"].get<size_t>());
  const auto first = full["first_ids"].get<std::vector<int>>();
  const auto last = full["last_ids"].get<std::vector<int>>();
  EXPECT_EQ(std::vector<int>(ids.begin(), ids.begin() + first.size()), first);
  EXPECT_EQ(std::vector<int>(ids.end() - last.size(), ids.end()), last);
  char hash[32];
  std::snprintf(hash, sizeof(hash), "0x%016llx", static_cast<unsigned long long>(Fnv1a64(ids)));
  EXPECT_EQ(hash, full["fnv1a64"].get<std::string>());
}

TEST_P(ReferenceTokenizerTest, SerializeThenParseKeepsPiecesAndEncoding) {
  const std::string bytes = ReadLocalFile(TokenizerDir(GetParam()) + "/tokenizer.model");
  auto model = ParseSentencePieceModel(bytes);
  QAAS_ASSERT_OK(model);
  EXPECT_EQ(model->model_type, SentencePieceModel::ModelType::kBpe);
  EXPECT_TRUE(model->byte_fallback);
  EXPECT_EQ(model->normalizer_name, "identity");
  EXPECT_FALSE(model->remove_extra_whitespaces);
  EXPECT_EQ(model->pad_id, -1);

  auto again = ParseSentencePieceModel(SerializeSentencePieceModel(*model));
  QAAS_ASSERT_OK(again);
  ASSERT_EQ(again->pieces.size(), model->pieces.size());
  for (size_t i = 0; i < model->pieces.size(); ++i) {
    ASSERT_EQ(again->pieces[i].piece, model->pieces[i].piece) << i;
    ASSERT_EQ(again->pieces[i].score, model->pieces[i].score) << i;
    ASSERT_EQ(again->pieces[i].type, model->pieces[i].type) << i;
  }
  EXPECT_EQ(again->model_type, model->model_type);
  EXPECT_EQ(again->byte_fallback, model->byte_fallback);
  EXPECT_EQ(again->unk_id, model->unk_id);
  EXPECT_EQ(again->bos_id, model->bos_id);
  EXPECT_EQ(again->eos_id, model->eos_id);
  EXPECT_EQ(again->pad_id, model->pad_id);
  EXPECT_EQ(again->normalizer_name, model->normalizer_name);
  EXPECT_EQ(again->add_dummy_prefix, model->add_dummy_prefix);
  EXPECT_EQ(again->remove_extra_whitespaces, model->remove_extra_whitespaces);
  EXPECT_EQ(again->escape_whitespaces, model->escape_whitespaces);

  auto tok = Tokenizer::FromModel(*std::move(again));
  QAAS_ASSERT_OK(tok);
  for (const auto& c : (*ref_)["cases"]) {
    EXPECT_EQ((*tok)->Encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int>>())
        << c["name"];
  }
}

TEST_P(ReferenceTokenizerTest, DecodingTheIdsGivesTheTextBack) {
  auto model = ParseSentencePieceModel(ReadLocalFile(TokenizerDir(GetParam()) + "/tokenizer.model"));
  QAAS_ASSERT_OK(model);
  for (const auto& c : (*ref_)["cases"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(Decode(*model, tok_->Encode(text)), text) << c["name"];
  }
}

INSTANTIATE_TEST_SUITE_P(BothModels, ReferenceTokenizerTest, ::testing::Values("stories260k", "llama2"));

// A hand-made BPE model: <unk> <s> </s> [256 byte pieces] then `normal`.
SentencePieceModel HandMadeModel(const std::vector<std::pair<std::string, float>>& normal,
                                 bool byte_fallback) {
  using P = SentencePieceModel::PieceType;
  SentencePieceModel m;
  m.model_type = SentencePieceModel::ModelType::kBpe;
  m.normalizer_name = "identity";
  m.remove_extra_whitespaces = false;
  m.byte_fallback = byte_fallback;
  m.pieces = {{"<unk>", 0, P::kUnknown}, {"<s>", 0, P::kControl}, {"</s>", 0, P::kControl}};
  if (byte_fallback) {
    for (int b = 0; b < 256; ++b) m.pieces.push_back({absl::StrFormat("<0x%02X>", b), 0, P::kByte});
  }
  for (const auto& [piece, score] : normal) m.pieces.push_back({piece, score, P::kNormal});
  return m;
}

// The ids of `pieces` in `m`.
std::vector<int> Ids(const SentencePieceModel& m, const std::vector<std::string>& pieces) {
  std::vector<int> ids;
  for (const auto& p : pieces) {
    int id = -1;
    for (size_t i = 0; i < m.pieces.size(); ++i) {
      if (m.pieces[i].piece == p) id = static_cast<int>(i);
    }
    EXPECT_GE(id, 0) << "no piece " << p;
    ids.push_back(id);
  }
  return ids;
}

const std::string kMark = "\xe2\x96\x81";

std::vector<int> EncodeWith(const SentencePieceModel& m, absl::string_view text) {
  auto tok = Tokenizer::FromModel(m);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? (*tok)->Encode(text) : std::vector<int>{};
}

TEST(TokenizerEncodeTest, HigherScoringMergeWins) {
  const auto bc_first = HandMadeModel({{kMark, 0}, {"a", -1}, {"b", -2}, {"c", -3}, {"ab", -5}, {"bc", -4}}, false);
  EXPECT_EQ(EncodeWith(bc_first, "abc"), Ids(bc_first, {kMark, "a", "bc"}));
  const auto ab_first = HandMadeModel({{kMark, 0}, {"a", -1}, {"b", -2}, {"c", -3}, {"ab", -4}, {"bc", -5}}, false);
  EXPECT_EQ(EncodeWith(ab_first, "abc"), Ids(ab_first, {kMark, "ab", "c"}));
}

TEST(TokenizerEncodeTest, EqualScoresMergeLeftmostFirst) {
  // SentencePiece's agenda breaks score ties by position: "xxx" -> "xx" "x".
  const auto m = HandMadeModel({{kMark, 0}, {"x", -1}, {"xx", -2}}, false);
  EXPECT_EQ(EncodeWith(m, "xxx"), Ids(m, {kMark, "xx", "x"}));
  EXPECT_EQ(EncodeWith(m, "xxxxx"), Ids(m, {kMark, "xx", "xx", "x"}));
}

TEST(TokenizerEncodeTest, UnknownCharactersBecomeOneUnkOrTheirBytes) {
  const std::string text = "a\xc3\xa9\xc3\xa9" "a";  // a e-acute e-acute a
  const auto no_bytes = HandMadeModel({{kMark, 0}, {"a", -1}}, false);
  std::vector<int> want = Ids(no_bytes, {kMark, "a"});
  want.push_back(0);  // one <unk> for the run of two unknown characters
  want.push_back(Ids(no_bytes, {"a"})[0]);
  EXPECT_EQ(EncodeWith(no_bytes, text), want);

  const auto bytes = HandMadeModel({{kMark, 0}, {"a", -1}}, true);
  EXPECT_EQ(EncodeWith(bytes, text), Ids(bytes, {kMark, "a", "<0xC3>", "<0xA9>", "<0xC3>", "<0xA9>", "a"}));
}

TEST(TokenizerEncodeTest, UserDefinedPiecesAreKeptWhole) {
  auto m = HandMadeModel({{kMark, 0}, {"a", -1}}, true);
  m.pieces.push_back({"<sep>", 0, SentencePieceModel::PieceType::kUserDefined});
  EXPECT_EQ(EncodeWith(m, "a<sep>a"), Ids(m, {kMark, "a", "<sep>", "a"}));
}

TEST(TokenizerEncodeTest, WhitespaceOptions) {
  auto m = HandMadeModel({{kMark, 0}, {"a", -1}, {"b", -2}}, false);
  EXPECT_EQ(EncodeWith(m, "a  b"), Ids(m, {kMark, "a", kMark, kMark, "b"}));
  EXPECT_TRUE(EncodeWith(m, "").empty());
  m.remove_extra_whitespaces = true;
  EXPECT_EQ(EncodeWith(m, "  a  b "), Ids(m, {kMark, "a", kMark, "b"}));
  EXPECT_TRUE(EncodeWith(m, "   ").empty());
  m.add_dummy_prefix = false;
  EXPECT_EQ(EncodeWith(m, "a b"), Ids(m, {"a", kMark, "b"}));
}

TEST(SentencePieceModelTest, GarbageIsInvalidArgument) {
  QAAS_EXPECT_CODE(ParseSentencePieceModel(""), kInvalidArgument);
  QAAS_EXPECT_CODE(ParseSentencePieceModel("not a protobuf at all"), kInvalidArgument);
  QAAS_EXPECT_CODE(ParseSentencePieceModel(std::string("\x0a\xff\xff\xff\xff\x0f", 6)), kInvalidArgument);
  for (unsigned seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    QAAS_EXPECT_CODE(ParseSentencePieceModel(::qaas::testing::PatternData(4096, seed)), kInvalidArgument);
  }
}

TEST(SentencePieceModelTest, TruncatedModelIsInvalidArgument) {
  QAAS_REQUIRE_SHARED();
  const std::string bytes = ReadLocalFile(Stories260kDir() + "/tokenizer.model");
  QAAS_ASSERT_OK(ParseSentencePieceModel(bytes));
  // Cut inside the first piece, and inside the trainer spec.
  QAAS_EXPECT_CODE(ParseSentencePieceModel(bytes.substr(0, 5)), kInvalidArgument);
  auto truncated = ParseSentencePieceModel(bytes.substr(0, bytes.size() - 3));
  QAAS_EXPECT_CODE(truncated, kInvalidArgument);
  EXPECT_TRUE(MessageHas(truncated, "tokenizer.model"));
}

TEST(TokenizerLoadTest, MissingMalformedAndUnsupportedFiles) {
  ScopedTempDir dir;
  auto t = Tokenizer::Load(dir.path());
  QAAS_EXPECT_CODE(t, kNotFound);
  EXPECT_TRUE(MessageHas(t, "tokenizer.model"));

  // tokenizer.json goes to the byte-level BPE tokenizer (bpe_tokenizer_test.cc).
  WriteLocalFile(dir.path() + "/tokenizer.json", "{}");
  t = Tokenizer::Load(dir.path());
  QAAS_EXPECT_CODE(t, kInvalidArgument);
  EXPECT_TRUE(MessageHas(t, "tokenizer.json"));

  WriteLocalFile(dir.path() + "/tokenizer.model", "garbage");
  t = Tokenizer::Load(dir.path());
  QAAS_EXPECT_CODE(t, kInvalidArgument);
  EXPECT_TRUE(MessageHas(t, dir.path() + "/tokenizer.model"));
}

TEST(TokenizerLoadTest, UnigramAndNormalizingModelsAreUnimplemented) {
  auto model = TrainBpeModel(kTinyText, 300);
  QAAS_ASSERT_OK(model);
  SentencePieceModel unigram = *model;
  unigram.model_type = SentencePieceModel::ModelType::kUnigram;
  QAAS_EXPECT_CODE(Tokenizer::FromModel(unigram), kUnimplemented);

  SentencePieceModel nfkc = *model;
  nfkc.normalizer_name = "nmt_nfkc";
  nfkc.has_precompiled_charsmap = true;
  auto t = Tokenizer::FromModel(nfkc);
  QAAS_EXPECT_CODE(t, kUnimplemented);
  EXPECT_TRUE(MessageHas(t, "nmt_nfkc"));

  SentencePieceModel no_bytes = *model;
  no_bytes.pieces.erase(no_bytes.pieces.begin() + 3 + 0x41);  // drop <0x41>
  t = Tokenizer::FromModel(no_bytes);
  QAAS_EXPECT_CODE(t, kInvalidArgument);
  EXPECT_TRUE(MessageHas(t, "<0x41>"));
}

TEST(TrainBpeModelTest, LearnsAUsableTokenizerWithinTheVocabulary) {
  const std::string text = std::string(kTinyText) + kTinyText;
  size_t previous_ids = text.size();  // bytes: what a merge-less tokenizer would give
  for (int vocab : {300, 512}) {
    SCOPED_TRACE(vocab);
    auto model = TrainBpeModel(text, vocab);
    QAAS_ASSERT_OK(model);
    EXPECT_LE(static_cast<int>(model->pieces.size()), vocab);
    EXPECT_GT(model->pieces.size(), 259u);  // special + byte pieces + learnt ones
    std::set<std::string> unique;
    for (const auto& p : model->pieces) unique.insert(p.piece);
    EXPECT_EQ(unique.size(), model->pieces.size()) << "duplicate pieces (SentencePiece rejects them)";

    // The serialized model loads like a tokenizer.model file.
    ScopedTempDir dir;
    WriteLocalFile(dir.path() + "/tokenizer.model", SerializeSentencePieceModel(*model));
    auto tok = Tokenizer::Load(dir.path());
    QAAS_ASSERT_OK(tok);
    EXPECT_EQ((*tok)->vocab_size(), static_cast<int>(model->pieces.size()));
    EXPECT_EQ((*tok)->bos_id(), 1);
    EXPECT_EQ((*tok)->eos_id(), 2);

    const std::vector<int> ids = (*tok)->Encode(text);
    ASSERT_FALSE(ids.empty());
    for (int id : ids) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, (*tok)->vocab_size());
    }
    EXPECT_LT(ids.size(), previous_ids) << "more merges should shorten the text";
    previous_ids = ids.size();
    EXPECT_EQ(Decode(*model, ids), text);

    // Characters never seen in training fall back to their UTF-8 bytes.
    const std::string unseen = "Lily \xe6\x97\xa5 Z{";
    const std::vector<int> unseen_ids = (*tok)->Encode(unseen);
    for (unsigned char b : std::string("\xe6\x97\xa5{")) {
      const int byte_id = 3 + b;  // pieces: <unk> <s> </s> <0x00> ... <0xFF> ...
      EXPECT_EQ(model->pieces[byte_id].piece, absl::StrFormat("<0x%02X>", b));
      EXPECT_NE(std::find(unseen_ids.begin(), unseen_ids.end(), byte_id), unseen_ids.end())
          << "no byte piece for " << static_cast<int>(b);
    }
    EXPECT_EQ(Decode(*model, unseen_ids), unseen);
  }
}

TEST(TrainBpeModelTest, TooSmallVocabularyIsInvalidArgument) {
  QAAS_EXPECT_CODE(TrainBpeModel(kTinyText, 259), kInvalidArgument);
  QAAS_EXPECT_CODE(TrainBpeModel(kTinyText, 10), kInvalidArgument);
}

TEST(TrainBpeModelTest, IsDeterministic) {
  auto a = TrainBpeModel(kTinyText, 400);
  auto b = TrainBpeModel(kTinyText, 400);
  QAAS_ASSERT_OK(a);
  QAAS_ASSERT_OK(b);
  EXPECT_EQ(SerializeSentencePieceModel(*a), SerializeSentencePieceModel(*b));
}

}  // namespace
}  // namespace qaas::quant
