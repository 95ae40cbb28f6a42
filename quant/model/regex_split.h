// The Split pre-tokenizer of Hugging Face tokenizers with behavior "Isolated"
// (Llama 3's and Qwen2's tokenizer.json): a regex, matched repeatedly, cuts
// the text; matches and the stretches between them become words of their
// own. PCRE2 runs the pattern with Unicode properties (\p{L}, \p{N}), Unicode
// \s and \d, and lookahead, as the tokenizers package's Oniguruma does; text
// that is not valid UTF-8 is matched with its bad bytes as characters no
// class contains. Thread-safe once compiled.
#ifndef QAAS_QUANT_MODEL_REGEX_SPLIT_H_
#define QAAS_QUANT_MODEL_REGEX_SPLIT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qaas::quant {

class RegexSplitter {
 public:
  // InvalidArgument naming the pattern and PCRE2's reason when it does not
  // compile.
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Compile(const std::string& pattern);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // The consecutive pieces (views into `text`) that cover it exactly.
  std::vector<absl::string_view> Split(absl::string_view text) const;
  const std::string& pattern() const { return pattern_; }

 private:
  RegexSplitter() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8
};

// `text` in Unicode Normalization Form C (utf8proc); `text` itself when it is
// not valid UTF-8.
std::string NormalizeNfc(absl::string_view text);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_REGEX_SPLIT_H_
