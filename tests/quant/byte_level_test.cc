#include "quant/model/byte_level.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/model/unicode_classes.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

std::vector<std::string> Split(absl::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view w : SplitGpt2Words(text)) out.emplace_back(w);
  return out;
}

using Words = std::vector<std::string>;

TEST(SplitGpt2WordsTest, AsciiFollowsThePattern) {
  EXPECT_EQ(Split(""), Words{});
  EXPECT_EQ(Split("Hello world"), (Words{"Hello", " world"}));
  // Contractions are lower-case ASCII only; anything else after ' is punctuation.
  EXPECT_EQ(Split("don't I'll we're they've I'm he'd it's"),
            (Words{"don", "'t", " I", "'ll", " we", "'re", " they", "'ve", " I", "'m", " he", "'d",
                   " it", "'s"}));
  EXPECT_EQ(Split("DON'T 's x'lls"), (Words{"DON", "'", "T", " '", "s", " x", "'ll", "s"}));
  EXPECT_EQ(Split("!!'s ''s"), (Words{"!!'", "s", " ''", "s"}));
  // Letters, numbers and other characters form separate runs, each taking one leading space.
  EXPECT_EQ(Split("In 2024, 3.14 x2"), (Words{"In", " 2024", ",", " 3", ".", "14", " x", "2"}));
  EXPECT_EQ(Split("a+b=c; #tag"), (Words{"a", "+", "b", "=", "c", ";", " #", "tag"}));
  // Whitespace: a run before a word leaves its last space to the word; at the end it stays whole.
  EXPECT_EQ(Split("a   b"), (Words{"a", "  ", " b"}));
  EXPECT_EQ(Split("end   "), (Words{"end", "   "}));
  EXPECT_EQ(Split("   lead"), (Words{"  ", " lead"}));
  EXPECT_EQ(Split("a \nb"), (Words{"a", " ", "\n", "b"}));
  EXPECT_EQ(Split("x\n\n\ty"), (Words{"x", "\n\n", "\t", "y"}));
  EXPECT_EQ(Split("line\r\n"), (Words{"line", "\r\n"}));
  EXPECT_EQ(Split(" "), (Words{" "}));
  EXPECT_EQ(Split(" !"), (Words{" !"}));
}

TEST(SplitGpt2WordsTest, UnicodeClasses) {
  // Non-ASCII letters join words, non-ASCII numbers join numbers.
  EXPECT_EQ(Split("naïve café 日本語 🙂"), (Words{"naïve", " café", " 日本語", " 🙂"}));
  EXPECT_EQ(Split("Ωμέγα ٣٤½ Ⅷx"), (Words{"Ωμέγα", " ٣٤½", " Ⅷ", "x"}));
  EXPECT_EQ(Split("“q” — ok"), (Words{"“", "q", "”", " —", " ok"}));
  // No-break and ideographic spaces are whitespace but not the ' ' a word may take.
  EXPECT_EQ(Split("x\u00a0y"), (Words{"x", "\u00a0", "y"}));
  EXPECT_EQ(Split("a \u3000 b"), (Words{"a", " \u3000", " b"}));
}

TEST(SplitGpt2WordsTest, MalformedUtf8BytesAreOtherCharacters) {
  EXPECT_EQ(Split("a\xff"
                  "b"),
            (Words{"a", "\xff", "b"}));
  EXPECT_EQ(Split(" \xc3(x"), (Words{" \xc3(", "x"}));              // truncated sequence
  EXPECT_EQ(Split("\xed\xa0\x80z"), (Words{"\xed\xa0\x80", "z"}));  // a surrogate
  EXPECT_EQ(Split("\xc0\xaf"), (Words{"\xc0\xaf"}));                // overlong '/'
}

TEST(SplitGpt2WordsTest, PiecesCoverTheTextExactly) {
  const nlohmann::json& ref = OptReference();
  for (const auto& c : ref["tokenizer"]["forms"]["tokenizer.json"]["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const Words words = Split(text);
    EXPECT_EQ(absl::StrJoin(words, ""), text) << c["name"];
    for (const auto& w : words) EXPECT_FALSE(w.empty()) << c["name"];
  }
}

TEST(UnicodeClassesTest, Categories) {
  for (char32_t c : {U'a', U'Z', U'é', U'Ω', U'日', U'ß', U'ª'})
    EXPECT_TRUE(IsUnicodeLetter(c)) << static_cast<uint32_t>(c);
  for (char32_t c : {U'0', U'9', U'٣', U'½', U'Ⅷ', U'²', U'𝟘'})
    EXPECT_TRUE(IsUnicodeNumber(c)) << static_cast<uint32_t>(c);
  for (char32_t c :
       {U' ', U'\t', U'\n', U'\r', U'\v', U'\f', U'\u0085', U'\u00a0', U'\u2028', U'\u3000'}) {
    EXPECT_TRUE(IsUnicodeWhitespace(c)) << static_cast<uint32_t>(c);
  }
  // Python's str.isspace counts U+001C..U+001F; the regex's \s does not.
  for (char32_t c : {U'\x1c', U'\x1f', U'\u200b'})
    EXPECT_FALSE(IsUnicodeWhitespace(c)) << static_cast<uint32_t>(c);
  for (char32_t c : {U'!', U'\'', U'—', U'🙂', U'\u0301', char32_t{0x110000}}) {
    EXPECT_FALSE(IsUnicodeLetter(c) || IsUnicodeNumber(c) || IsUnicodeWhitespace(c))
        << static_cast<uint32_t>(c);
  }
}

TEST(ByteLevelAlphabetTest, IsGptTwosBytesToUnicode) {
  const auto& a = ByteLevelAlphabet();
  EXPECT_EQ(a['!'], "!");
  EXPECT_EQ(a['a'], "a");
  EXPECT_EQ(a[' '], "\xc4\xa0");   // U+0120 Ġ
  EXPECT_EQ(a['\n'], "\xc4\x8a");  // U+010A Ċ
  EXPECT_EQ(a[0x00], "\xc4\x80");  // U+0100
  EXPECT_EQ(a[0x7f], "\xc4\xa1");  // U+0121: after the 33 bytes 0x00..0x20
  EXPECT_EQ(a[0xad], "\xc5\x83");  // U+0143: the last unprintable byte
  EXPECT_EQ(a[0xe9], "\xc3\xa9");  // é maps to itself
  EXPECT_EQ(std::set<std::string>(a.begin(), a.end()).size(), 256u);
  EXPECT_EQ(ByteLevelEncode("a b\xc3\xa9"),
            "a\xc4\xa0"
            "b\xc3\x83\xc2\xa9");
}

}  // namespace
}  // namespace qaas::quant
