#include "quant/model/bpe_tokenizer.h"

#include <deque>

#include <algorithm>
#include <queue>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "quant/model/byte_level.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Load(const std::string& dir) {
  QAAS_ASSIGN_OR_RETURN(auto spec, ReadBpeFiles(dir));
  return FromSpec(std::move(spec));
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromSpec(BpeSpec spec) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->spec_ = std::move(spec);
  const BpeSpec& s = t->spec_;
  if (!s.split_regex.empty()) {
    auto splitter = RegexSplitter::Compile(s.split_regex);
    if (!splitter.ok()) return Annotate(splitter.status(), s.source);
    t->splitter_ = *std::move(splitter);
  }
  for (size_t rank = 0; rank < s.merges.size(); ++rank) {
    const auto& [left, right] = s.merges[rank];
    const std::string merged = left + right;
    const int a = t->TokenId(left), b = t->TokenId(right), m = t->TokenId(merged);
    if (a < 0 || b < 0 || m < 0) {
      return absl::InvalidArgumentError(absl::StrCat(s.source, ": merge ", rank + 1, " '", left,
                                                     " ", right, "': '",
                                                     a < 0   ? left
                                                     : b < 0 ? right
                                                             : merged,
                                                     "' is not in the vocabulary"));
    }
    // A repeated pair keeps its last rank, as tokenizers' map does.
    t->merges_[PairKey(a, b)] = {static_cast<int>(rank), m};
  }
  for (auto [token, id, what] :
       {std::tuple<const std::string&, int*, const char*>{s.bos_token, &t->bos_id_, "bos_token"},
        {s.eos_token, &t->eos_id_, "eos_token"},
        {s.unk_token, &t->unk_id_, "unk_token"}}) {
    if (token.empty()) continue;
    *id = t->TokenId(token);
    if (*id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(s.source, ": ", what, " '", token, "' is not in the vocabulary"));
    }
  }
  const auto& alphabet = ByteLevelAlphabet();
  for (int b = 0; b < 256; ++b) {
    t->byte_ids_[b] = t->TokenId(alphabet[b]);
    t->fallback_ids_[b] = t->TokenId(absl::StrFormat("<0x%02X>", b));
  }
  for (const auto& [token, id] : s.vocab) t->vocab_size_ = std::max(t->vocab_size_, id + 1);
  for (const auto& a : s.added_tokens) t->vocab_size_ = std::max(t->vocab_size_, a.id + 1);
  return t;
}

int BpeTokenizer::TokenId(absl::string_view token) const {
  for (const auto& a : spec_.added_tokens) {
    if (a.content == token) return a.id;
  }
  auto it = spec_.vocab.find(std::string(token));
  return it == spec_.vocab.end() ? -1 : it->second;
}

// Cuts the added tokens of one group (normalized or not) out of the text
// segments: at each position the longest token that starts there, scanning
// left to right (tokenizers' leftmost-longest match).
std::vector<BpeTokenizer::Segment> BpeTokenizer::SplitAdded(std::vector<Segment> segments,
                                                            bool normalized) const {
  bool first_byte[256] = {};
  bool any = false;
  for (const auto& a : spec_.added_tokens) {
    if (a.normalized == normalized) {
      first_byte[static_cast<uint8_t>(a.content[0])] = true;
      any = true;
    }
  }
  if (!any) return segments;
  std::vector<Segment> out;
  for (const Segment& s : segments) {
    if (s.added_id >= 0) {
      out.push_back(s);
      continue;
    }
    const absl::string_view text = s.text;
    size_t start = 0;
    for (size_t pos = 0; pos < text.size();) {
      const BpeAddedToken* best = nullptr;
      if (first_byte[static_cast<uint8_t>(text[pos])]) {
        for (const auto& a : spec_.added_tokens) {
          if (a.normalized == normalized && a.content.size() <= text.size() - pos &&
              (best == nullptr || a.content.size() > best->content.size()) &&
              text.compare(pos, a.content.size(), a.content) == 0) {
            best = &a;
          }
        }
      }
      if (best == nullptr) {
        ++pos;
        continue;
      }
      if (pos > start) out.push_back({text.substr(start, pos - start), -1, s.at_start && start == 0});
      out.push_back({text.substr(pos, best->content.size()), best->id});
      pos += best->content.size();
      start = pos;
    }
    if (start < text.size()) out.push_back({text.substr(start), -1, s.at_start && start == 0});
  }
  return out;
}

// BPE over one pre-tokenized word: the symbols start as the word's bytes
// (their byte-level characters' ids); repeatedly the adjacent pair with the
// lowest merge rank, leftmost on ties, becomes its merged token.
void BpeTokenizer::EncodeWord(absl::string_view word, std::vector<int>* ids) const {
  if (spec_.ignore_merges) {
    auto it = spec_.vocab.find(ByteLevelEncode(word));
    if (it != spec_.vocab.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  std::vector<int> initial;
  initial.reserve(word.size());
  bool last_was_unk = false;
  for (char c : word) {
    int id = byte_ids_[static_cast<uint8_t>(c)];
    if (id < 0) {
      // Not in the vocabulary: <unk> when the model has one, else dropped
      // (as tokenizers does).
      if (unk_id_ < 0 || (spec_.fuse_unk && last_was_unk)) continue;
      id = unk_id_;
      last_was_unk = true;
    } else {
      last_was_unk = false;
    }
    initial.push_back(id);
  }
  MergeSymbols(initial, ids);
}

std::vector<int> BpeTokenizer::CharacterSymbols(absl::string_view word) const {
  std::vector<int> initial;
  initial.reserve(word.size());
  bool last_was_unk = false;
  for (size_t i = 0; i < word.size();) {
    // One UTF-8 character (a malformed byte stands alone).
    const uint8_t lead = static_cast<uint8_t>(word[i]);
    size_t n = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 1;
    n = std::min(n, word.size() - i);
    const absl::string_view ch = word.substr(i, n);
    i += n;
    auto it = spec_.vocab.find(std::string(ch));
    if (it != spec_.vocab.end()) {
      initial.push_back(it->second);
      last_was_unk = false;
      continue;
    }
    if (spec_.byte_fallback) {
      bool all = true;
      for (char b : ch) all = all && fallback_ids_[static_cast<uint8_t>(b)] >= 0;
      if (all) {
        for (char b : ch) initial.push_back(fallback_ids_[static_cast<uint8_t>(b)]);
        last_was_unk = false;
        continue;
      }
    }
    if (unk_id_ < 0 || (spec_.fuse_unk && last_was_unk)) continue;
    initial.push_back(unk_id_);
    last_was_unk = true;
  }
  return initial;
}

void BpeTokenizer::MergeSymbols(const std::vector<int>& initial, std::vector<int>* ids) const {
  struct Symbol {
    int id;  // -1 once merged into its left neighbour
    int prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(initial.size());
  for (int id : initial) {
    const int n = static_cast<int>(sym.size());
    sym.push_back({id, n - 1, n + 1});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Candidate {
    int rank, left, left_id, right_id, merged_id;
  };
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> agenda(later);
  auto consider = [&](int left) {
    if (left < 0 || sym[left].next < 0) return;
    const int right = sym[left].next;
    auto it = merges_.find(PairKey(sym[left].id, sym[right].id));
    if (it == merges_.end()) return;
    agenda.push({it->second.rank, left, sym[left].id, sym[right].id, it->second.merged_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(sym.size()); ++i) consider(i);
  while (!agenda.empty()) {
    const Candidate c = agenda.top();
    agenda.pop();
    Symbol& l = sym[c.left];
    // Stale when either side has been merged since: a merge changes the left
    // symbol's id (tokens only grow) and retires the right one.
    if (l.id != c.left_id || l.next < 0 || sym[l.next].id != c.right_id) continue;
    Symbol& r = sym[l.next];
    l.id = c.merged_id;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    r.id = -1;
    consider(l.prev);
    consider(c.left);
  }
  for (int i = 0; i >= 0; i = sym[i].next) ids->push_back(sym[i].id);
}

std::vector<int> BpeTokenizer::Encode(absl::string_view text) const {
  std::vector<Segment> segments = {{text, -1, true}};
  segments = SplitAdded(std::move(segments), /*normalized=*/false);
  // The normalizer sees the text around the unnormalized added tokens;
  // normalized added tokens are then found in its output.
  std::deque<std::string> normalized;
  if (!spec_.normalizer.empty()) {
    for (Segment& s : segments) {
      if (s.added_id >= 0) continue;
      std::string t(s.text);
      for (const auto& step : spec_.normalizer) {
        switch (step.kind) {
          case BpeSpec::NormalizerStep::kNfc:
            t = NormalizeNfc(t);
            break;
          case BpeSpec::NormalizerStep::kPrepend:
            if (!t.empty()) t = step.text + t;
            break;
          case BpeSpec::NormalizerStep::kReplace:
            t = absl::StrReplaceAll(t, {{step.text, step.content}});
            break;
        }
      }
      normalized.push_back(std::move(t));
      s.text = normalized.back();
    }
  }
  segments = SplitAdded(std::move(segments), /*normalized=*/true);
  std::vector<int> ids;
  for (const Segment& s : segments) {
    if (s.added_id >= 0) {
      ids.push_back(s.added_id);
      continue;
    }
    if (s.text.empty()) continue;
    if (!spec_.byte_level) {
      // SentencePiece-style: the segment is one word of characters.
      absl::string_view word = s.text;
      std::string spaced;
      if (spec_.metaspace) {
        const std::string& r = spec_.metaspace_replacement;
        spaced = absl::StrReplaceAll(word, {{" ", r}});
        // "first": only the segment the text starts with (its offset 0).
        const bool prepend = spec_.metaspace_prepend == "always" ||
                             (spec_.metaspace_prepend == "first" && s.at_start);
        if (prepend && spaced.compare(0, r.size(), r) != 0) spaced = r + spaced;
        word = spaced;
      }
      // Split(pattern, MergedWithPrevious): each word ends after the pattern.
      std::vector<absl::string_view> words;
      if (spec_.split_string.empty()) {
        words.push_back(word);
      } else {
        size_t start = 0;
        for (size_t at; (at = word.find(spec_.split_string, start)) != absl::string_view::npos;) {
          words.push_back(word.substr(start, at + spec_.split_string.size() - start));
          start = at + spec_.split_string.size();
        }
        if (start < word.size()) words.push_back(word.substr(start));
      }
      for (absl::string_view w : words) {
        if (spec_.ignore_merges) {
          auto it = spec_.vocab.find(std::string(w));
          if (it != spec_.vocab.end()) {
            ids.push_back(it->second);
            continue;
          }
        }
        MergeSymbols(CharacterSymbols(w), &ids);
      }
      continue;
    }
    std::string prefixed;
    absl::string_view segment = s.text;
    if (spec_.add_prefix_space && segment[0] != ' ') {
      prefixed = absl::StrCat(" ", segment);
      segment = prefixed;
    }
    for (absl::string_view word : splitter_ ? splitter_->Split(segment) : SplitGpt2Words(segment)) {
      EncodeWord(word, &ids);
    }
  }
  return ids;
}

}  // namespace qaas::quant
