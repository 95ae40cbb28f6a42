// Quantization schemes: what is quantized (weights, activations, KV cache), in
// which number format, at which granularity. Pure C++ (no libtorch) so that the
// server can validate a job's scheme without linking the quantization code.
//
// Shorthand grammar (case-insensitive), e.g. "W4A16g128", "W8A8", "W4A8KV4",
// "Wmxfp4Amxfp4", "W4A16g128_sym":
//
//   scheme  := "W" format [ group ] [ "A" format [ group ] ] [ "KV" format ] { ("_"|"-") option }
//   group   := "g" INT             weights' group size (at most once; "W4A16g128" is canonical)
//   format  := INT                 integer, 2..8 bits; 16 (or 32) = not quantized
//            | "mxint" INT         OCP MX integer (4 or 8), blocks of 32
//            | "mxfp" INT [ "e" INT "m" INT ]
//                                  OCP MX float: 4 = E2M1, 6 = E3M2 (or "mxfp6e2m3"),
//                                  8 = E4M3 (or "mxfp8e5m2")
//            | "fp8" [ "e4m3" | "e5m2" ]   FP8: weights scaled per output channel
//                                  (E4M3 only), activations per token
//                                  (dynamic), the KV cache per tensor
//   option  := "sym" | "asym"      symmetry of the integer weights (default asym)
//            | "static"            integer activations: one scale per tensor,
//                                  calibrated (needs calibration data)
//
// Defaults: integer weights are per output channel, or per group of INT along
// the input dimension with "g"; integer activations are per token (dynamic),
// symmetric; the KV cache is per token and head (dynamic), asymmetric. MX
// formats use blocks of 32 along the last (reduction) dimension. A missing
// "A" means A16.
#ifndef QAAS_QUANT_SCHEME_H_
#define QAAS_QUANT_SCHEME_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace qaas::quant {

enum class NumberFormat { kNone, kInt, kFp8E4M3, kFp8E5M2, kMxInt, kMxFp };
enum class Granularity { kDefault, kPerTensor, kPerChannel, kPerGroup, kPerToken, kPerHead, kBlock };

absl::string_view NumberFormatName(NumberFormat f);
absl::string_view GranularityName(Granularity g);

// How one kind of tensor is quantized. format kNone = kept in float.
struct TensorQuant {
  NumberFormat format = NumberFormat::kNone;
  int bits = 16;
  Granularity granularity = Granularity::kDefault;
  int group_size = 0;  // kPerGroup only
  bool symmetric = false;
  // Float element formats (MXFP, FP8): the exponent width; 0 = the default
  // for `bits` (8: E4M3, 6: E3M2, 4: E2M1). kFp8E5M2 sets it to 5.
  int exponent_bits = 0;

  bool enabled() const { return format != NumberFormat::kNone; }
  bool is_mx() const { return format == NumberFormat::kMxInt || format == NumberFormat::kMxFp; }
  // Integer with one calibrated scale per tensor (activations' "_static").
  bool is_static_int() const { return format == NumberFormat::kInt && granularity == Granularity::kPerTensor; }
  friend bool operator==(const TensorQuant& a, const TensorQuant& b) {
    return a.format == b.format && a.bits == b.bits && a.granularity == b.granularity &&
           a.group_size == b.group_size && a.symmetric == b.symmetric &&
           a.exponent_bits == b.exponent_bits;
  }
};

struct Scheme {
  TensorQuant weights;
  TensorQuant activations;
  TensorQuant kv_cache;

  // The canonical shorthand, e.g. "W4A16g128" (parsing it gives this scheme back).
  std::string ToString() const;
  bool weight_only() const { return !activations.enabled() && !kv_cache.enabled(); }
};

// Parses the shorthand. InvalidArgument names the offending token and its
// position, e.g. "scheme 'W4Z8': unexpected 'Z8' at position 2".
absl::StatusOr<Scheme> ParseScheme(absl::string_view shorthand);

// Checks a scheme built field by field (bits in range, group size for groups,
// granularity allowed for the tensor kind). Fills kDefault granularities.
absl::StatusOr<Scheme> NormalizeScheme(Scheme scheme);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_SCHEME_H_
