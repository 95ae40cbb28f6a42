// SentencePiece's tokenizer.model (a serialized sentencepiece.ModelProto),
// read and written with a small protobuf wire-format codec of our own.
// Debian's libsentencepiece bundles a private protobuf-lite whose exported
// symbols collide with the libprotobuf that libtorch and gRPC use, so qaas does
// not link it (docs/decisions.md).
//
// Only the fields tokenization needs are kept: pieces (string, score, type),
// the trainer's model type / byte fallback / special ids, and the normalizer's
// name and whitespace flags.
#ifndef QAAS_QUANT_MODEL_SENTENCEPIECE_MODEL_H_
#define QAAS_QUANT_MODEL_SENTENCEPIECE_MODEL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qaas::quant {

struct SentencePieceModel {
  enum class PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  enum class ModelType { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };
  struct Piece {
    std::string piece;
    float score = 0;
    PieceType type = PieceType::kNormal;
  };
  std::vector<Piece> pieces;
  ModelType model_type = ModelType::kUnigram;
  bool byte_fallback = false;
  int unk_id = 0;
  int bos_id = 1;
  int eos_id = 2;
  int pad_id = -1;
  std::string normalizer_name = "nmt_nfkc";
  bool has_precompiled_charsmap = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

// InvalidArgument when the bytes are not a ModelProto.
absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(absl::string_view bytes);
std::string SerializeSentencePieceModel(const SentencePieceModel& model);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_SENTENCEPIECE_MODEL_H_
