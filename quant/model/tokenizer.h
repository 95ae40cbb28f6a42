// The model's tokenizer: SentencePiece BPE models (tokenizer.model), as LLaMA
// and Mistral ship them, encoded exactly as SentencePiece does (checked against
// its Python package in tests/quant/tokenizer_test.cc). The byte-level BPE of
// tokenizer.json (GPT-2 / OPT) comes with the OPT work.
#ifndef QAAS_QUANT_MODEL_TOKENIZER_H_
#define QAAS_QUANT_MODEL_TOKENIZER_H_

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quant/model/sentencepiece_model.h"

namespace qaas::quant {

class Tokenizer {
 public:
  // Loads <dir>/tokenizer.model. NotFound when missing; InvalidArgument when
  // malformed; Unimplemented for unigram models or non-identity normalizers
  // (the message names the setting).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModel(SentencePieceModel model);

  // Encodes text without BOS/EOS (callers add BOS where a protocol asks).
  std::vector<int> Encode(absl::string_view text) const;
  int bos_id() const { return model_.bos_id; }
  int eos_id() const { return model_.eos_id; }
  int vocab_size() const { return static_cast<int>(model_.pieces.size()); }

 private:
  Tokenizer() = default;
  std::string Normalize(absl::string_view text) const;

  SentencePieceModel model_;
  std::unordered_map<std::string, int> pieces_;  // normal, user-defined and unused pieces
  std::vector<std::string> user_defined_;
  int byte_ids_[256] = {};
};

// A small SentencePiece BPE model (byte fallback, identity normalizer) learnt
// from `text` with at most `vocab_size` pieces: for generated test models.
absl::StatusOr<SentencePieceModel> TrainBpeModel(absl::string_view text, int vocab_size);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_TOKENIZER_H_
