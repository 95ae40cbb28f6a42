// Bit packing of integer codes into 32-bit words, as a little-endian bit
// stream: code i of a column occupies bits [i*b, (i+1)*b) of the stream, word
// w holds stream bits [32w, 32w+32), least significant bit first. For 2, 4 and
// 8 bits this is the GPTQ checkpoint's qweight/qzeros layout; for 3 bits it is
// the same stream GPTQ writes (values straddle word boundaries).
#ifndef QAAS_QUANT_FORMATS_PACKING_H_
#define QAAS_QUANT_FORMATS_PACKING_H_

#include <ATen/ATen.h>

namespace qaas::quant {

// codes: int32 [n, cols] with values in [0, 2^bits). Packs along dim 0 into
// int32 [ceil(n * bits / 32), cols]. Codes outside the range are masked.
at::Tensor PackRows(const at::Tensor& codes, int bits);
// Inverse of PackRows for `n` rows.
at::Tensor UnpackRows(const at::Tensor& packed, int bits, int64_t n);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_FORMATS_PACKING_H_
