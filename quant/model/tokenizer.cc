#include "quant/model/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <queue>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "quant/model/bpe_tokenizer.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

constexpr absl::string_view kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's whitespace mark

// Length of the UTF-8 character starting at s[i] (1 for invalid bytes).
size_t CharLen(absl::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
  return std::min(n, s.size() - i);
}

// SentencePiece BPE (tokenizer.model).
class SentencePieceTokenizer : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(SentencePieceModel model);

  std::vector<int> Encode(absl::string_view text) const override;
  int bos_id() const override { return model_.bos_id; }
  bool add_bos() const override { return add_bos_ && model_.bos_id >= 0; }
  void set_add_bos(bool add) { add_bos_ = add; }
  int eos_id() const override { return model_.eos_id; }
  int vocab_size() const override { return static_cast<int>(model_.pieces.size()); }

 private:
  SentencePieceTokenizer() = default;
  std::string Normalize(absl::string_view text) const;

  SentencePieceModel model_;
  std::unordered_map<std::string, int> pieces_;  // normal, user-defined and unused pieces
  std::vector<std::string> user_defined_;
  int byte_ids_[256] = {};
  bool add_bos_ = true;  // LlamaTokenizer's default
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::string path = model_dir + "/tokenizer.model";
  if (!FileExists(path)) {
    if (FileExists(model_dir + "/tokenizer.json") ||
        (FileExists(model_dir + "/vocab.json") && FileExists(model_dir + "/merges.txt"))) {
      QAAS_ASSIGN_OR_RETURN(auto bpe, BpeTokenizer::Load(model_dir));
      return std::unique_ptr<Tokenizer>(std::move(bpe));
    }
    return absl::NotFoundError(
        absl::StrCat(model_dir, ": no tokenizer.model, tokenizer.json or vocab.json + merges.txt"));
  }
  QAAS_ASSIGN_OR_RETURN(auto bytes, ReadFile(path));
  auto model = ParseSentencePieceModel(bytes);
  if (!model.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", model.status().message()));
  QAAS_ASSIGN_OR_RETURN(auto tokenizer, FromModel(*std::move(model)));
  // tokenizer_config.json's add_bos_token overrides the default (BOS first).
  const std::string config_path = model_dir + "/tokenizer_config.json";
  if (FileExists(config_path)) {
    QAAS_ASSIGN_OR_RETURN(const std::string text, ReadFile(config_path));
    const auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": not a JSON object"));
    }
    if (j.contains("add_bos_token") && !j["add_bos_token"].is_null()) {
      if (!j["add_bos_token"].is_boolean()) {
        return absl::InvalidArgumentError(absl::StrCat(config_path, ": 'add_bos_token' must be a boolean"));
      }
      static_cast<SentencePieceTokenizer*>(tokenizer.get())->set_add_bos(j["add_bos_token"].get<bool>());
    }
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModel(SentencePieceModel model) {
  return SentencePieceTokenizer::Create(std::move(model));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> SentencePieceTokenizer::Create(
    SentencePieceModel model) {
  if (model.model_type != SentencePieceModel::ModelType::kBpe) {
    return absl::UnimplementedError("tokenizer.model: only BPE SentencePiece models are supported");
  }
  if (model.normalizer_name != "identity" && model.has_precompiled_charsmap) {
    return absl::UnimplementedError(absl::StrCat("tokenizer.model: normalizer '", model.normalizer_name,
                                                 "' is not supported (identity only)"));
  }
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  std::fill(std::begin(t->byte_ids_), std::end(t->byte_ids_), -1);
  for (size_t i = 0; i < model.pieces.size(); ++i) {
    const auto& p = model.pieces[i];
    using T = SentencePieceModel::PieceType;
    if (p.type == T::kNormal || p.type == T::kUserDefined || p.type == T::kUnused) {
      t->pieces_.emplace(p.piece, static_cast<int>(i));
      if (p.type == T::kUserDefined) t->user_defined_.push_back(p.piece);
    } else if (p.type == T::kByte) {
      unsigned value = 0;
      if (p.piece.size() == 6 && std::sscanf(p.piece.c_str(), "<0x%02X>", &value) == 1 && value < 256) {
        t->byte_ids_[value] = static_cast<int>(i);
      }
    }
  }
  if (model.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (t->byte_ids_[b] < 0) {
        return absl::InvalidArgumentError(absl::StrFormat("tokenizer.model: byte fallback without <0x%02X>", b));
      }
    }
  }
  t->model_ = std::move(model);
  return std::unique_ptr<Tokenizer>(std::move(t));
}

std::string SentencePieceTokenizer::Normalize(absl::string_view text) const {
  std::string s(text);
  if (model_.remove_extra_whitespaces) {
    std::string out;
    bool space = true;  // drops leading spaces
    for (char c : s) {
      if (c == ' ') {
        if (!space) out.push_back(' ');
        space = true;
      } else {
        out.push_back(c);
        space = false;
      }
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    s = std::move(out);
  }
  if (s.empty()) return s;
  if (model_.add_dummy_prefix) s.insert(s.begin(), ' ');
  if (!model_.escape_whitespaces) return s;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  for (char c : s) {
    if (c == ' ') {
      out.append(kSpace.data(), kSpace.size());
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// SentencePiece's BPE encoding: start from characters (user-defined pieces
// kept whole), repeatedly merge the adjacent pair whose concatenation is the
// highest-scoring piece (leftmost on ties), then map each symbol to its id,
// falling back to its bytes (or <unk>) when it is not a piece.
std::vector<int> SentencePieceTokenizer::Encode(absl::string_view text) const {
  const std::string norm = Normalize(text);
  struct Symbol {
    int prev, next;
    size_t begin, len;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < norm.size();) {
    size_t len = CharLen(norm, i);
    for (const auto& u : user_defined_) {
      if (u.size() > len && norm.compare(i, u.size(), u) == 0) len = u.size();
    }
    const int n = static_cast<int>(sym.size());
    sym.push_back({n - 1, n + 1, i, len});
    i += len;
  }
  if (sym.empty()) return {};
  sym.back().next = -1;

  struct Candidate {
    float score;
    int left, right;
    size_t len;
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> agenda(worse);
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t len = sym[left].len + sym[right].len;
    auto it = pieces_.find(norm.substr(sym[left].begin, len));
    if (it == pieces_.end()) return;
    agenda.push({model_.pieces[it->second].score, left, right, len});
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) consider(static_cast<int>(i), static_cast<int>(i + 1));
  while (!agenda.empty()) {
    Candidate c = agenda.top();
    agenda.pop();
    Symbol& l = sym[c.left];
    Symbol& r = sym[c.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != c.len || l.next != c.right) continue;  // stale
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }

  std::vector<int> ids;
  for (int i = 0; i >= 0; i = sym[i].next) {
    const std::string piece = norm.substr(sym[i].begin, sym[i].len);
    auto it = pieces_.find(piece);
    if (it != pieces_.end()) {
      ids.push_back(it->second);
    } else if (model_.byte_fallback) {
      for (unsigned char b : piece) ids.push_back(byte_ids_[b]);
    } else if (ids.empty() || ids.back() != model_.unk_id) {
      ids.push_back(model_.unk_id);  // SentencePiece merges runs of unknowns
    }
  }
  return ids;
}

absl::StatusOr<SentencePieceModel> TrainBpeModel(absl::string_view text, int vocab_size) {
  using P = SentencePieceModel::PieceType;
  SentencePieceModel m;
  m.model_type = SentencePieceModel::ModelType::kBpe;
  m.byte_fallback = true;
  m.normalizer_name = "identity";
  m.remove_extra_whitespaces = false;
  m.pieces = {{"<unk>", 0, P::kUnknown}, {"<s>", 0, P::kControl}, {"</s>", 0, P::kControl}};
  for (int b = 0; b < 256; ++b) m.pieces.push_back({absl::StrFormat("<0x%02X>", b), 0, P::kByte});
  if (vocab_size < static_cast<int>(m.pieces.size()) + 1) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer vocab_size must exceed ", m.pieces.size()));
  }
  // Words start at each whitespace mark; merges never cross them.
  std::map<std::string, int64_t> word_counts;
  {
    std::string norm;
    for (char c : text.substr(0, 1 << 20)) {
      if (c == ' ' || c == '\n') {
        if (!norm.empty()) ++word_counts[norm];
        norm = std::string(kSpace);
        if (c == '\n') {
          ++word_counts["\n"];
          norm.clear();
        }
      } else {
        norm.push_back(c);
      }
    }
    if (!norm.empty()) ++word_counts[norm];
  }
  std::vector<std::pair<std::vector<std::string>, int64_t>> words;
  std::map<std::string, int64_t> char_counts;
  for (const auto& [w, n] : word_counts) {
    std::vector<std::string> chars;
    for (size_t i = 0; i < w.size();) {
      const size_t len = CharLen(w, i);
      chars.push_back(w.substr(i, len));
      char_counts[chars.back()] += n;
      i += len;
    }
    words.emplace_back(std::move(chars), n);
  }
  std::vector<std::pair<int64_t, std::string>> by_freq;
  for (const auto& [c, n] : char_counts) by_freq.emplace_back(-n, c);
  std::sort(by_freq.begin(), by_freq.end());
  float score = 0;
  for (const auto& [n, c] : by_freq) {
    if (static_cast<int>(m.pieces.size()) >= vocab_size) break;
    m.pieces.push_back({c, score, P::kNormal});
    score -= 1;
  }
  while (static_cast<int>(m.pieces.size()) < vocab_size) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& [chars, n] : words) {
      for (size_t i = 0; i + 1 < chars.size(); ++i) pairs[{chars[i], chars[i + 1]}] += n;
    }
    if (pairs.empty()) break;
    auto best = std::max_element(pairs.begin(), pairs.end(),
                                 [](const auto& a, const auto& b) { return a.second < b.second; });
    const std::string merged = best->first.first + best->first.second;
    m.pieces.push_back({merged, score, P::kNormal});
    score -= 1;
    const auto [a, b] = best->first;
    for (auto& [chars, n] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < chars.size(); ++i) {
        if (i + 1 < chars.size() && chars[i] == a && chars[i + 1] == b) {
          out.push_back(merged);
          ++i;
        } else {
          out.push_back(chars[i]);
        }
      }
      chars = std::move(out);
    }
  }
  return m;
}

}  // namespace qaas::quant
