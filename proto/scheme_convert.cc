#include "proto/scheme_convert.h"

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas {
namespace {

quant::TensorQuant FromProto(const v1::TensorQuant& p) {
  quant::TensorQuant q;
  switch (p.format()) {
    case v1::NUMBER_FORMAT_INT: q.format = quant::NumberFormat::kInt; break;
    case v1::NUMBER_FORMAT_FP8_E4M3: q.format = quant::NumberFormat::kFp8E4M3; break;
    case v1::NUMBER_FORMAT_FP8_E5M2: q.format = quant::NumberFormat::kFp8E5M2; break;
    case v1::NUMBER_FORMAT_MXINT: q.format = quant::NumberFormat::kMxInt; break;
    case v1::NUMBER_FORMAT_MXFP: q.format = quant::NumberFormat::kMxFp; break;
    default: q.format = quant::NumberFormat::kNone; break;
  }
  q.bits = p.bits();
  q.granularity = static_cast<quant::Granularity>(p.granularity());
  q.group_size = p.group_size();
  q.symmetric = p.symmetric();
  q.exponent_bits = p.exponent_bits();
  return q;
}

v1::TensorQuant ToProto(const quant::TensorQuant& q) {
  v1::TensorQuant p;
  switch (q.format) {
    case quant::NumberFormat::kInt: p.set_format(v1::NUMBER_FORMAT_INT); break;
    case quant::NumberFormat::kFp8E4M3: p.set_format(v1::NUMBER_FORMAT_FP8_E4M3); break;
    case quant::NumberFormat::kFp8E5M2: p.set_format(v1::NUMBER_FORMAT_FP8_E5M2); break;
    case quant::NumberFormat::kMxInt: p.set_format(v1::NUMBER_FORMAT_MXINT); break;
    case quant::NumberFormat::kMxFp: p.set_format(v1::NUMBER_FORMAT_MXFP); break;
    case quant::NumberFormat::kNone: return p;
  }
  p.set_bits(q.bits);
  p.set_granularity(static_cast<v1::Granularity>(q.granularity));
  p.set_group_size(q.group_size);
  p.set_symmetric(q.symmetric);
  p.set_exponent_bits(q.exponent_bits);
  return p;
}

// The enums are declared in the same order on both sides.
static_assert(static_cast<int>(quant::Granularity::kBlock) == v1::GRANULARITY_BLOCK);
static_assert(static_cast<int>(quant::Granularity::kPerGroup) == v1::GRANULARITY_PER_GROUP);

}  // namespace

absl::StatusOr<quant::Scheme> SchemeFromProto(const v1::QuantScheme& p) {
  const bool structured = p.has_weights() || p.has_activations() || p.has_kv_cache();
  if (p.shorthand().empty() && !structured) {
    return absl::InvalidArgumentError("scheme: required (e.g. shorthand \"W4A16g128\")");
  }
  std::optional<quant::Scheme> from_fields;
  if (structured) {
    quant::Scheme s;
    s.weights = FromProto(p.weights());
    s.activations = FromProto(p.activations());
    s.kv_cache = FromProto(p.kv_cache());
    QAAS_ASSIGN_OR_RETURN(from_fields, quant::NormalizeScheme(s));
  }
  if (p.shorthand().empty()) return *from_fields;
  QAAS_ASSIGN_OR_RETURN(auto parsed, quant::ParseScheme(p.shorthand()));
  if (from_fields && !(from_fields->weights == parsed.weights &&
                       from_fields->activations == parsed.activations &&
                       from_fields->kv_cache == parsed.kv_cache)) {
    return absl::InvalidArgumentError(absl::StrCat("scheme: shorthand '", p.shorthand(),
                                                   "' and the structured fields disagree"));
  }
  return parsed;
}

v1::QuantScheme SchemeToProto(const quant::Scheme& s) {
  v1::QuantScheme p;
  *p.mutable_weights() = ToProto(s.weights);
  *p.mutable_activations() = ToProto(s.activations);
  *p.mutable_kv_cache() = ToProto(s.kv_cache);
  // The shorthand cannot say everything (per-tensor weights): keep it only
  // when it means exactly this scheme.
  auto reparsed = quant::ParseScheme(s.ToString());
  if (reparsed.ok() && reparsed->weights == s.weights && reparsed->activations == s.activations &&
      reparsed->kv_cache == s.kv_cache) {
    p.set_shorthand(s.ToString());
  }
  return p;
}

}  // namespace qaas
