#include "quant/model/byte_level.h"

#include <cstdint>

#include "quant/model/unicode_classes.h"
#include "quant/model/utf8.h"

namespace qaas::quant {
namespace {

struct Char {
  size_t begin;  // byte offset into the text
  char32_t cp;   // kInvalidCodePoint for a malformed byte
};

enum class Class { kLetter, kNumber, kSpace, kOther };

Class ClassOf(char32_t c) {
  if (IsUnicodeLetter(c)) return Class::kLetter;
  if (IsUnicodeNumber(c)) return Class::kNumber;
  if (IsUnicodeWhitespace(c)) return Class::kSpace;
  return Class::kOther;
}

// Length in characters of the contraction ('s 't 're 've 'm 'll 'd) at chars[i], or 0.
size_t ContractionAt(const std::vector<Char>& chars, size_t i) {
  if (chars[i].cp != '\'' || i + 1 >= chars.size()) return 0;
  const char32_t a = chars[i + 1].cp;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= chars.size()) return 0;
  const char32_t b = chars[i + 2].cp;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

}  // namespace

std::vector<absl::string_view> SplitGpt2Words(absl::string_view text) {
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    char32_t cp;
    const size_t len = DecodeUtf8(text, i, &cp);
    chars.push_back({i, cp});
    i += len;
  }
  const size_t n = chars.size();
  std::vector<Class> cls(n);
  for (size_t i = 0; i < n; ++i) cls[i] = ClassOf(chars[i].cp);
  // The end of the run of class `c` starting at chars[from].
  auto run_end = [&](size_t from, Class c) {
    while (from < n && cls[from] == c) ++from;
    return from;
  };

  std::vector<absl::string_view> words;
  for (size_t i = 0; i < n;) {
    size_t end;  // in characters
    if (const size_t k = ContractionAt(chars, i); k > 0) {
      end = i + k;  // 's|'t|'re|'ve|'m|'ll|'d
    } else if (chars[i].cp == ' ' && i + 1 < n && cls[i + 1] != Class::kSpace) {
      end = run_end(i + 1,
                    cls[i + 1]);  // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+" with the space
    } else if (cls[i] != Class::kSpace) {
      end = run_end(i, cls[i]);  // the same without the space
    } else {
      // \s+(?!\S): the whole run at the end of the text, else the run less its
      // last character (which then leads the next word), else (a lone space
      // character before a non-space) \s+.
      end = run_end(i, Class::kSpace);
      if (end < n && end - i >= 2) --end;
    }
    const size_t begin_byte = chars[i].begin;
    const size_t end_byte = end < n ? chars[end].begin : text.size();
    words.push_back(text.substr(begin_byte, end_byte - begin_byte));
    i = end;
  }
  return words;
}

const std::array<std::string, 256>& ByteLevelAlphabet() {
  static const std::array<std::string, 256>* kAlphabet = [] {
    auto* a = new std::array<std::string, 256>();
    auto utf8 = [](char32_t c) {
      std::string s;
      if (c < 0x80) {
        s.push_back(static_cast<char>(c));
      } else {  // all code points here are below U+0800
        s.push_back(static_cast<char>(0xC0 | (c >> 6)));
        s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
      }
      return s;
    };
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      (*a)[b] = utf8(printable ? static_cast<char32_t>(b) : next++);
    }
    return a;
  }();
  return *kAlphabet;
}

std::string ByteLevelEncode(absl::string_view bytes) {
  const auto& alphabet = ByteLevelAlphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += alphabet[static_cast<uint8_t>(c)];
  return out;
}

}  // namespace qaas::quant
