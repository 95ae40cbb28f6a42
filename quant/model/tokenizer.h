// The model's tokenizer, an interface with two implementations chosen by the
// files in the model directory:
//   * tokenizer.model: SentencePiece BPE models, as LLaMA and Mistral ship
//     them, encoded exactly as SentencePiece does (checked against its Python
//     package in tests/quant/tokenizer_test.cc);
//   * tokenizer.json, or vocab.json + merges.txt: byte-level BPE as GPT-2 and
//     OPT use it (bpe_tokenizer.h).
#ifndef QAAS_QUANT_MODEL_TOKENIZER_H_
#define QAAS_QUANT_MODEL_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quant/model/sentencepiece_model.h"

namespace qaas::quant {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads the tokenizer of a model directory: <dir>/tokenizer.model when
  // present (SentencePiece), else <dir>/tokenizer.json or <dir>/vocab.json +
  // <dir>/merges.txt (byte-level BPE, see BpeTokenizer::Load). NotFound when
  // there is none of them; InvalidArgument when malformed; Unimplemented for
  // unigram models, non-identity normalizers and the tokenizer.json features
  // BpeTokenizer does not run (the message names the setting).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);
  // A SentencePiece BPE tokenizer of a parsed tokenizer.model.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModel(SentencePieceModel model);

  // Encodes text without BOS/EOS (callers add BOS where a protocol asks).
  // Thread-safe (const).
  virtual std::vector<int> Encode(absl::string_view text) const = 0;
  // -1 when the tokenizer has none.
  virtual int bos_id() const = 0;
  // Whether Transformers' tokenizer.encode(text) puts BOS first by default
  // (add_special_tokens=True): tokenizer_config.json's add_bos_token, else
  // the tokenizer's own default (SentencePiece models: yes; tokenizer.json:
  // its post-processor's template). lm-evaluation-harness encodes so.
  virtual bool add_bos() const = 0;
  virtual int eos_id() const = 0;
  // One more than the largest id Encode can return.
  virtual int vocab_size() const = 0;

 protected:
  Tokenizer() = default;
};

// A small SentencePiece BPE model (byte fallback, identity normalizer) learnt
// from `text` with at most `vocab_size` pieces: for generated test models.
absl::StatusOr<SentencePieceModel> TrainBpeModel(absl::string_view text, int vocab_size);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_TOKENIZER_H_
