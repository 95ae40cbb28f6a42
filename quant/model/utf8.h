// UTF-8 decoding, strict: what the tokenizers and the task prompts read
// text with. Header-only, pure.
#ifndef QAAS_QUANT_MODEL_UTF8_H_
#define QAAS_QUANT_MODEL_UTF8_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace qaas::quant {

constexpr char32_t kInvalidCodePoint = 0xFFFFFFFF;  // in no Unicode class

// Decodes one UTF-8 character at s[i] into *cp; returns its length. A byte
// that does not begin a well-formed sequence (overlong forms and surrogates
// included) is one character, kInvalidCodePoint.
inline size_t DecodeUtf8(absl::string_view s, size_t i, char32_t* cp) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t len;
  char32_t min, value;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, min = 0x80, value = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, min = 0x800, value = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, value = b0 & 0x07;
  } else {
    *cp = kInvalidCodePoint;
    return 1;
  }
  if (i + len > s.size()) {
    *cp = kInvalidCodePoint;
    return 1;
  }
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) {
      *cp = kInvalidCodePoint;
      return 1;
    }
    value = (value << 6) | (byte(i + k) & 0x3F);
  }
  if (value < min || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) {
    *cp = kInvalidCodePoint;
    return 1;
  }
  *cp = value;
  return len;
}

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_UTF8_H_
