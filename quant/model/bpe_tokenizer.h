// Byte-level BPE as GPT-2 and OPT use it, encoded as Hugging Face tokenizers
// does (checked against transformers in tests/quant/bpe_tokenizer_test.cc):
//   1. added tokens (BpeSpec::added_tokens) are cut out of the text whole,
//      leftmost-longest, the non-normalized ones first;
//   2. the rest is cut into words by GPT-2's pre-tokenizer regex
//      (SplitGpt2Words) and each word's bytes are written in the byte-level
//      alphabet (ByteLevelAlphabet);
//   3. within each word, adjacent symbols are merged by the rank of their
//      pair in the merge list (lowest rank first, leftmost on ties) until no
//      listed pair is left; the symbols are then vocabulary ids.
// SentencePiece-style tokenizer.json (Llama 2 and Gemma conversions) runs the
// same merges without the byte-level alphabet: the normalizer (Prepend "▁",
// Replace " " by "▁") or the Metaspace pre-tokenizer writes spaces as "▁",
// each text segment is one word whose symbols start as its characters, and a
// character missing from the vocabulary becomes its bytes' <0xXX> tokens.
#ifndef QAAS_QUANT_MODEL_BPE_TOKENIZER_H_
#define QAAS_QUANT_MODEL_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quant/model/bpe_files.h"
#include "quant/model/regex_split.h"
#include "quant/model/tokenizer.h"

namespace qaas::quant {

class BpeTokenizer : public Tokenizer {
 public:
  // ReadBpeFiles(dir), then FromSpec: see bpe_files.h for the files, the
  // special tokens and the errors.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Load(const std::string& dir);
  // InvalidArgument, naming the spec's source, when a merge's parts or result
  // or the bos/eos/unk token are not in the vocabulary.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromSpec(BpeSpec spec);

  // Encodes without adding BOS/EOS (see add_bos()). Special tokens written in
  // the text are encoded as their ids, as transformers does by default.
  std::vector<int> Encode(absl::string_view text) const override;
  // OPT: </s>, id 2; GPT-2: <|endoftext|>. -1 when there is none.
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }
  // One more than the largest vocabulary or added token id.
  int vocab_size() const override { return vocab_size_; }

  // Whether the files ask for BOS before every text (transformers' encode
  // with add_special_tokens=True). Encode never adds it; callers prepend
  // bos_id() where their protocol asks.
  bool add_bos() const override { return spec_.add_bos; }
  // The id of an added or vocabulary token, -1 when there is none.
  int TokenId(absl::string_view token) const;

 private:
  struct Merge {
    int rank;
    int merged_id;
  };
  // A segment of the input: either an added token's id or text for BPE.
  struct Segment {
    absl::string_view text;
    int added_id;           // -1 for text
    bool at_start = false;  // text that begins the input (Metaspace's "first")
  };

  BpeTokenizer() = default;
  std::vector<Segment> SplitAdded(std::vector<Segment> segments, bool normalized) const;
  void EncodeWord(absl::string_view word, std::vector<int>* ids) const;
  // BPE over initial symbols (ids, -1 never): merges by rank, appended to ids.
  void MergeSymbols(const std::vector<int>& initial, std::vector<int>* ids) const;
  // The initial symbols of a SentencePiece-style word: its characters' ids,
  // byte fallback or <unk> for the others.
  std::vector<int> CharacterSymbols(absl::string_view word) const;
  static uint64_t PairKey(int left, int right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  BpeSpec spec_;
  std::unique_ptr<RegexSplitter> splitter_;  // spec_.split_regex compiled; null for GPT-2's
  std::unordered_map<uint64_t, Merge> merges_;  // by PairKey(left id, right id)
  int byte_ids_[256] = {};  // id of each byte's character, -1 when not in the vocabulary
  int fallback_ids_[256] = {};  // id of each byte's <0xXX> token, -1 when not in the vocabulary
  int unk_id_ = -1;
  int bos_id_ = -1;
  int eos_id_ = -1;
  int vocab_size_ = 0;
};

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_BPE_TOKENIZER_H_
