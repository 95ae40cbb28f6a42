#include "quant/scheme.h"

#include <algorithm>
#include <cctype>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::string_view NumberFormatName(NumberFormat f) {
  switch (f) {
    case NumberFormat::kNone: return "none";
    case NumberFormat::kInt: return "int";
    case NumberFormat::kFp8E4M3: return "fp8_e4m3";
    case NumberFormat::kFp8E5M2: return "fp8_e5m2";
    case NumberFormat::kMxInt: return "mxint";
    case NumberFormat::kMxFp: return "mxfp";
  }
  return "?";
}

absl::string_view GranularityName(Granularity g) {
  switch (g) {
    case Granularity::kDefault: return "default";
    case Granularity::kPerTensor: return "per_tensor";
    case Granularity::kPerChannel: return "per_channel";
    case Granularity::kPerGroup: return "per_group";
    case Granularity::kPerToken: return "per_token";
    case Granularity::kPerHead: return "per_head";
    case Granularity::kBlock: return "block";
  }
  return "?";
}

namespace {

// A cursor over the lower-cased shorthand that remembers the original text
// for error messages.
class Lexer {
 public:
  explicit Lexer(absl::string_view original)
      : original_(original), text_(absl::AsciiStrToLower(original)) {}

  bool done() const { return pos_ >= text_.size(); }
  size_t pos() const { return pos_; }
  bool Consume(absl::string_view word) {
    if (absl::string_view(text_).substr(std::min(pos_, text_.size()), word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  bool PeekDigit() const { return !done() && std::isdigit(static_cast<unsigned char>(text_[pos_])); }
  int ReadInt() {
    int v = 0;
    while (PeekDigit() && v < 100000) v = v * 10 + (text_[pos_++] - '0');
    return v;
  }
  // The rest of the current token (up to the next separator) for messages.
  std::string TokenAt(size_t at) const {
    size_t end = at;
    while (end < original_.size() && original_[end] != '_' && original_[end] != '-') ++end;
    return std::string(original_.substr(at, end - at));
  }
  absl::Status Error(size_t at, absl::string_view what) const {
    std::string token = TokenAt(at);
    if (token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("scheme '", original_, "': ", what, " at end of string"));
    }
    return absl::InvalidArgumentError(absl::StrCat("scheme '", original_, "': ", what, " '",
                                                   token, "' at position ", at));
  }

 private:
  absl::string_view original_;
  std::string text_;
  size_t pos_ = 0;
};

absl::StatusOr<TensorQuant> ParseFormat(Lexer& lx, absl::string_view kind) {
  TensorQuant q;
  size_t at = lx.pos();
  if (lx.Consume("mxint")) {
    if (!lx.PeekDigit()) return lx.Error(lx.pos(), absl::StrCat(kind, ": expected bits after mxint"));
    q.format = NumberFormat::kMxInt;
    q.bits = lx.ReadInt();
    q.granularity = Granularity::kBlock;
    q.symmetric = true;
    if (q.bits != 4 && q.bits != 8) return lx.Error(at, absl::StrCat(kind, ": MXINT needs 4 or 8 bits, got"));
    return q;
  }
  if (lx.Consume("mxfp")) {
    if (!lx.PeekDigit()) return lx.Error(lx.pos(), absl::StrCat(kind, ": expected bits after mxfp"));
    q.format = NumberFormat::kMxFp;
    q.bits = lx.ReadInt();
    q.granularity = Granularity::kBlock;
    q.symmetric = true;
    if (q.bits != 4 && q.bits != 6 && q.bits != 8) {
      return lx.Error(at, absl::StrCat(kind, ": MXFP needs 4, 6 or 8 bits, got"));
    }
    const size_t variant_at = lx.pos();
    if (lx.Consume("e")) {
      if (!lx.PeekDigit()) return lx.Error(variant_at, absl::StrCat(kind, ": expected an element like e2m3, got"));
      const int e = lx.ReadInt();
      if (!lx.Consume("m") || !lx.PeekDigit()) {
        return lx.Error(variant_at, absl::StrCat(kind, ": expected an element like e2m3, got"));
      }
      const int m = lx.ReadInt();
      const bool known = (q.bits == 8 && ((e == 4 && m == 3) || (e == 5 && m == 2))) ||
                         (q.bits == 6 && ((e == 3 && m == 2) || (e == 2 && m == 3))) ||
                         (q.bits == 4 && e == 2 && m == 1);
      if (!known) {
        return lx.Error(at, absl::StrCat(kind, ": MX has no such element (mxfp8e4m3, mxfp8e5m2, mxfp6e3m2, "
                                               "mxfp6e2m3, mxfp4e2m1), got"));
      }
      q.exponent_bits = e;
    }
    return q;
  }
  if (lx.Consume("fp8")) {
    q.format = lx.Consume("e5m2") ? NumberFormat::kFp8E5M2 : NumberFormat::kFp8E4M3;
    if (q.format == NumberFormat::kFp8E4M3) lx.Consume("e4m3");
    q.bits = 8;
    q.exponent_bits = q.format == NumberFormat::kFp8E5M2 ? 5 : 4;
    q.symmetric = true;  // granularity: NormalizeScheme's, by tensor kind
    return q;
  }
  if (!lx.PeekDigit()) return lx.Error(at, absl::StrCat(kind, ": expected bits or a format, got"));
  q.bits = lx.ReadInt();
  if (q.bits == 16 || q.bits == 32) {
    q.format = NumberFormat::kNone;
    q.bits = 16;
    return q;
  }
  if (q.bits < 2 || q.bits > 8) {
    return lx.Error(at, absl::StrCat(kind, ": integer bits must be 2..8 or 16, got"));
  }
  q.format = NumberFormat::kInt;
  return q;
}

std::string FormatToString(const TensorQuant& q) {
  switch (q.format) {
    case NumberFormat::kNone: return "16";
    case NumberFormat::kInt: return std::to_string(q.bits);
    case NumberFormat::kFp8E4M3: return "fp8";
    case NumberFormat::kFp8E5M2: return "fp8e5m2";
    case NumberFormat::kMxInt: return absl::StrCat("mxint", q.bits);
    case NumberFormat::kMxFp:
      return absl::StrCat("mxfp", q.bits,
                          q.exponent_bits == 0 ? "" : absl::StrCat("e", q.exponent_bits, "m", q.bits - 1 - q.exponent_bits));
  }
  return "?";
}

}  // namespace

absl::StatusOr<Scheme> ParseScheme(absl::string_view shorthand) {
  Lexer lx(shorthand);
  if (shorthand.empty()) return absl::InvalidArgumentError("scheme is empty");
  if (!lx.Consume("w")) return lx.Error(0, "expected 'W' (weights) first, got");
  Scheme s;
  QAAS_ASSIGN_OR_RETURN(s.weights, ParseFormat(lx, "weights"));
  if (s.weights.format == NumberFormat::kInt) s.weights.granularity = Granularity::kPerChannel;
  // The weights' group size may follow W or A: "W4g128A16" and "W4A16g128".
  auto group = [&]() -> absl::Status {
    size_t at = lx.pos();
    if (!lx.Consume("g")) return absl::OkStatus();
    if (!lx.PeekDigit()) return lx.Error(at, "expected a group size after 'g', got");
    if (s.weights.format != NumberFormat::kInt) {
      return lx.Error(at, "group size applies to integer weights only, got");
    }
    if (s.weights.granularity == Granularity::kPerGroup) return lx.Error(at, "second group size");
    s.weights.group_size = lx.ReadInt();
    s.weights.granularity = Granularity::kPerGroup;
    return absl::OkStatus();
  };
  QAAS_RETURN_IF_ERROR(group());
  size_t at = lx.pos();
  if (lx.Consume("a")) {
    QAAS_ASSIGN_OR_RETURN(s.activations, ParseFormat(lx, "activations"));
    if (s.activations.format == NumberFormat::kInt) {
      s.activations.granularity = Granularity::kPerToken;
      s.activations.symmetric = true;
    }
    QAAS_RETURN_IF_ERROR(group());
  }
  at = lx.pos();
  if (lx.Consume("kv")) {
    QAAS_ASSIGN_OR_RETURN(s.kv_cache, ParseFormat(lx, "kv cache"));
    if (s.kv_cache.format == NumberFormat::kInt) s.kv_cache.granularity = Granularity::kPerToken;
  }
  while (!lx.done()) {
    at = lx.pos();
    if (!lx.Consume("_") && !lx.Consume("-")) return lx.Error(at, "unexpected");
    at = lx.pos();
    if (lx.Consume("asym")) {
      s.weights.symmetric = false;
    } else if (lx.Consume("static")) {
      if (s.activations.format != NumberFormat::kInt) {
        return lx.Error(at, "option applies to integer activations only:");
      }
      s.activations.granularity = Granularity::kPerTensor;
    } else if (lx.Consume("sym")) {
      if (s.weights.format != NumberFormat::kInt) return lx.Error(at, "option applies to integer weights only:");
      s.weights.symmetric = true;
    } else {
      return lx.Error(at, "unknown option");
    }
    if (!lx.done() && lx.TokenAt(lx.pos()).size() > 0) return lx.Error(at, "unknown option");
  }
  return NormalizeScheme(s);
}

absl::StatusOr<Scheme> NormalizeScheme(Scheme s) {
  auto check = [](TensorQuant& q, absl::string_view kind, bool is_weight) -> absl::Status {
    if (q.format == NumberFormat::kNone) {
      q = TensorQuant{};
      return absl::OkStatus();
    }
    if (q.format == NumberFormat::kInt && (q.bits < 2 || q.bits > 8)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kind, ".bits: integer bits must be 2..8, got ", q.bits));
    }
    if (q.format == NumberFormat::kFp8E4M3 || q.format == NumberFormat::kFp8E5M2) {
      q.bits = 8;
      q.exponent_bits = q.format == NumberFormat::kFp8E5M2 ? 5 : 4;
      // Weights per output channel, activations per token (dynamic): what
      // vLLM's FP8 kernels run (compressed-tensors' FP8_DYNAMIC); the KV
      // cache per tensor.
      const Granularity fp8 = is_weight ? Granularity::kPerChannel
                              : kind == "kv_cache" ? Granularity::kPerTensor
                                                   : Granularity::kPerToken;
      if (q.granularity == Granularity::kDefault) q.granularity = fp8;
      if (q.granularity != fp8) {
        return absl::InvalidArgumentError(absl::StrCat(kind, ": FP8 is scaled ", GranularityName(fp8), " here"));
      }
      q.symmetric = true;
      return absl::OkStatus();
    }
    if (q.is_mx()) {
      if (q.format == NumberFormat::kMxInt && q.bits != 4 && q.bits != 8) {
        return absl::InvalidArgumentError(absl::StrCat(kind, ".bits: MXINT needs 4 or 8 bits, got ", q.bits));
      }
      if (q.format == NumberFormat::kMxFp) {
        const int default_e = q.bits == 8 ? 4 : q.bits == 6 ? 3 : q.bits == 4 ? 2 : -1;
        if (default_e < 0) {
          return absl::InvalidArgumentError(absl::StrCat(kind, ".bits: MXFP needs 4, 6 or 8 bits, got ", q.bits));
        }
        if (q.exponent_bits == default_e) q.exponent_bits = 0;  // canonical: the default is implied
        const bool alt = (q.bits == 8 && q.exponent_bits == 5) || (q.bits == 6 && q.exponent_bits == 2);
        if (q.exponent_bits != 0 && !alt) {
          return absl::InvalidArgumentError(absl::StrCat(kind, ".exponent_bits: MXFP", q.bits,
                                                         " has no element with ", q.exponent_bits,
                                                         " exponent bits"));
        }
      } else if (q.exponent_bits != 0) {
        return absl::InvalidArgumentError(absl::StrCat(kind, ".exponent_bits: MXINT has no exponent"));
      }
      q.symmetric = true;
      if (q.granularity == Granularity::kDefault) q.granularity = Granularity::kBlock;
      if (q.granularity != Granularity::kBlock) {
        return absl::InvalidArgumentError(absl::StrCat(kind, ": MX formats use 32-element blocks"));
      }
      return absl::OkStatus();
    }
    if (q.granularity == Granularity::kDefault) {
      q.granularity = is_weight ? (q.group_size > 0 ? Granularity::kPerGroup : Granularity::kPerChannel)
                                : Granularity::kPerToken;
    }
    if (q.granularity == Granularity::kPerGroup) {
      if (!is_weight) {
        return absl::InvalidArgumentError(absl::StrCat(kind, ": per-group applies to weights only"));
      }
      if (q.group_size < 2 || q.group_size > 65536) {
        return absl::InvalidArgumentError(
            absl::StrCat(kind, ".group_size: must be 2..65536 for per-group, got ", q.group_size));
      }
    } else if (q.group_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(kind, ".group_size: set only for per-group"));
    }
    if (is_weight && (q.granularity == Granularity::kPerToken || q.granularity == Granularity::kPerHead)) {
      return absl::InvalidArgumentError(absl::StrCat(kind, ": granularity ",
                                                     GranularityName(q.granularity),
                                                     " is not for weights"));
    }
    return absl::OkStatus();
  };
  QAAS_RETURN_IF_ERROR(check(s.weights, "weights", true));
  QAAS_RETURN_IF_ERROR(check(s.activations, "activations", false));
  QAAS_RETURN_IF_ERROR(check(s.kv_cache, "kv_cache", false));
  return s;
}

std::string Scheme::ToString() const {
  std::string out = absl::StrCat("W", FormatToString(weights), "A", FormatToString(activations));
  if (weights.granularity == Granularity::kPerGroup) absl::StrAppend(&out, "g", weights.group_size);
  if (kv_cache.enabled()) absl::StrAppend(&out, "KV", FormatToString(kv_cache));
  if (weights.format == NumberFormat::kInt && weights.symmetric) absl::StrAppend(&out, "_sym");
  if (activations.is_static_int()) {
    absl::StrAppend(&out, "_static");
  }
  return out;
}

}  // namespace qaas::quant
