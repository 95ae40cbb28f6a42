// The text side of byte-level BPE as GPT-2 defined it and Hugging Face
// tokenizers' ByteLevel pre-tokenizer applies it: the regex that cuts text
// into words before BPE, and the reversible map from bytes to printable
// characters in which byte-level vocabularies and merges are written.
// Pure functions, thread-safe.
#ifndef QAAS_QUANT_MODEL_BYTE_LEVEL_H_
#define QAAS_QUANT_MODEL_BYTE_LEVEL_H_

#include <array>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace qaas::quant {

// Cuts `text` as GPT-2's pre-tokenizer regex
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// does when matched repeatedly (at each position the first alternative that
// matches wins; repetitions are greedy). The pieces are consecutive and cover
// `text` exactly; they view into it. The matching is hand-written, not a regex
// engine: contractions are ASCII and case-sensitive as in the pattern; \p{L},
// \p{N} and \s use the full Unicode tables of unicode_classes.h, so non-ASCII
// letters (é, Ω, 日) join words like ASCII ones, non-ASCII digits (٣, ½, Ⅷ) join
// numbers, and non-ASCII spaces (U+00A0, U+3000) are whitespace, exactly as the
// tokenizers package does. `text` is read as UTF-8; a byte that does not begin
// a well-formed sequence (including overlong forms and surrogates) counts as
// one character that is neither letter, number nor space.
std::vector<absl::string_view> SplitGpt2Words(absl::string_view text);

// GPT-2's bytes_to_unicode: byte b stands for a printable character, b itself
// for '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF, and U+0100 + n for the n-th
// remaining byte in increasing order (so ' ' is 'Ġ' U+0120, '\n' is 'Ċ'
// U+010A). Returned as UTF-8 strings, indexed by byte.
const std::array<std::string, 256>& ByteLevelAlphabet();

// The characters of `bytes` under ByteLevelAlphabet(), concatenated.
std::string ByteLevelEncode(absl::string_view bytes);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_BYTE_LEVEL_H_
