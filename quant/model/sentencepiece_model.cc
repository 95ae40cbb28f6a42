#include "quant/model/sentencepiece_model.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

// Protobuf wire format (https://protobuf.dev/programming-guides/encoding/).
enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }

  bool Varint(uint64_t* out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return false;
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      v |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) {
        *out = v;
        return true;
      }
    }
    return false;
  }
  bool Fixed32(uint32_t* out) {
    if (data_.size() - pos_ < 4) return false;
    std::memcpy(out, data_.data() + pos_, 4);
    pos_ += 4;
    return true;
  }
  bool Bytes(absl::string_view* out) {
    uint64_t n;
    if (!Varint(&n) || n > data_.size() - pos_) return false;
    *out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  // Reads a field header; skips nothing.
  bool Tag(int* field, int* wire) {
    uint64_t t;
    if (!Varint(&t)) return false;
    *field = static_cast<int>(t >> 3);
    *wire = static_cast<int>(t & 7);
    return *field > 0;
  }
  bool Skip(int wire) {
    uint64_t v;
    uint32_t f;
    absl::string_view s;
    switch (wire) {
      case kVarint: return Varint(&v);
      case kFixed64:
        if (data_.size() - pos_ < 8) return false;
        pos_ += 8;
        return true;
      case kLengthDelimited: return Bytes(&s);
      case kFixed32: return Fixed32(&f);
      default: return false;
    }
  }

 private:
  absl::string_view data_;
  size_t pos_ = 0;
};

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.model: malformed ", what));
}

absl::Status ParsePiece(absl::string_view bytes, SentencePieceModel::Piece* p) {
  Reader r(bytes);
  while (!r.done()) {
    int field, wire;
    if (!r.Tag(&field, &wire)) return Malformed("piece");
    absl::string_view s;
    uint32_t f;
    uint64_t v;
    if (field == 1 && wire == kLengthDelimited) {
      if (!r.Bytes(&s)) return Malformed("piece string");
      p->piece = std::string(s);
    } else if (field == 2 && wire == kFixed32) {
      if (!r.Fixed32(&f)) return Malformed("piece score");
      std::memcpy(&p->score, &f, 4);
    } else if (field == 3 && wire == kVarint) {
      if (!r.Varint(&v) || v < 1 || v > 6) return Malformed("piece type");
      p->type = static_cast<SentencePieceModel::PieceType>(v);
    } else if (!r.Skip(wire)) {
      return Malformed("piece field");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseTrainerSpec(absl::string_view bytes, SentencePieceModel* m) {
  Reader r(bytes);
  while (!r.done()) {
    int field, wire;
    if (!r.Tag(&field, &wire)) return Malformed("trainer_spec");
    if (wire != kVarint) {
      if (!r.Skip(wire)) return Malformed("trainer_spec field");
      continue;
    }
    uint64_t v;
    if (!r.Varint(&v)) return Malformed("trainer_spec varint");
    const int iv = static_cast<int>(static_cast<int32_t>(v));
    switch (field) {
      case 3: m->model_type = static_cast<SentencePieceModel::ModelType>(v); break;
      case 35: m->byte_fallback = v != 0; break;
      case 40: m->unk_id = iv; break;
      case 41: m->bos_id = iv; break;
      case 42: m->eos_id = iv; break;
      case 43: m->pad_id = iv; break;
      default: break;
    }
  }
  return absl::OkStatus();
}

absl::Status ParseNormalizerSpec(absl::string_view bytes, SentencePieceModel* m) {
  Reader r(bytes);
  while (!r.done()) {
    int field, wire;
    if (!r.Tag(&field, &wire)) return Malformed("normalizer_spec");
    absl::string_view s;
    uint64_t v;
    if (field == 1 && wire == kLengthDelimited) {
      if (!r.Bytes(&s)) return Malformed("normalizer name");
      m->normalizer_name = std::string(s);
    } else if (field == 2 && wire == kLengthDelimited) {
      if (!r.Bytes(&s)) return Malformed("precompiled_charsmap");
      m->has_precompiled_charsmap = !s.empty();
    } else if (field >= 3 && field <= 5 && wire == kVarint) {
      if (!r.Varint(&v)) return Malformed("normalizer flag");
      if (field == 3) m->add_dummy_prefix = v != 0;
      if (field == 4) m->remove_extra_whitespaces = v != 0;
      if (field == 5) m->escape_whitespaces = v != 0;
    } else if (!r.Skip(wire)) {
      return Malformed("normalizer field");
    }
  }
  return absl::OkStatus();
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void PutTag(std::string* out, int field, int wire) { PutVarint(out, (uint64_t(field) << 3) | wire); }
void PutBytes(std::string* out, int field, absl::string_view s) {
  PutTag(out, field, kLengthDelimited);
  PutVarint(out, s.size());
  out->append(s.data(), s.size());
}
void PutVarintField(std::string* out, int field, int64_t v) {
  PutTag(out, field, kVarint);
  PutVarint(out, static_cast<uint64_t>(v));  // negative ints take 10 bytes, as protobuf does
}

}  // namespace

absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(absl::string_view bytes) {
  SentencePieceModel m;
  Reader r(bytes);
  bool saw_trainer = false;
  while (!r.done()) {
    int field, wire;
    if (!r.Tag(&field, &wire)) return Malformed("ModelProto");
    absl::string_view s;
    if (wire == kLengthDelimited && field >= 1 && field <= 3) {
      if (!r.Bytes(&s)) return Malformed("ModelProto field");
      if (field == 1) {
        SentencePieceModel::Piece p;
        QAAS_RETURN_IF_ERROR(ParsePiece(s, &p));
        m.pieces.push_back(std::move(p));
      } else if (field == 2) {
        saw_trainer = true;
        QAAS_RETURN_IF_ERROR(ParseTrainerSpec(s, &m));
      } else {
        QAAS_RETURN_IF_ERROR(ParseNormalizerSpec(s, &m));
      }
    } else if (!r.Skip(wire)) {
      return Malformed("ModelProto field");
    }
  }
  if (m.pieces.empty() || !saw_trainer) return Malformed("model (no pieces or trainer_spec)");
  return m;
}

std::string SerializeSentencePieceModel(const SentencePieceModel& m) {
  std::string out;
  for (const auto& p : m.pieces) {
    std::string piece;
    PutBytes(&piece, 1, p.piece);
    PutTag(&piece, 2, kFixed32);
    char f[4];
    std::memcpy(f, &p.score, 4);
    piece.append(f, 4);
    PutVarintField(&piece, 3, static_cast<int>(p.type));
    PutBytes(&out, 1, piece);
  }
  std::string trainer;
  PutVarintField(&trainer, 3, static_cast<int>(m.model_type));
  PutVarintField(&trainer, 35, m.byte_fallback ? 1 : 0);
  PutVarintField(&trainer, 40, m.unk_id);
  PutVarintField(&trainer, 41, m.bos_id);
  PutVarintField(&trainer, 42, m.eos_id);
  PutVarintField(&trainer, 43, m.pad_id);
  PutBytes(&out, 2, trainer);
  std::string norm;
  PutBytes(&norm, 1, m.normalizer_name);
  PutVarintField(&norm, 3, m.add_dummy_prefix ? 1 : 0);
  PutVarintField(&norm, 4, m.remove_extra_whitespaces ? 1 : 0);
  PutVarintField(&norm, 5, m.escape_whitespaces ? 1 : 0);
  PutBytes(&out, 3, norm);
  return out;
}

}  // namespace qaas::quant
