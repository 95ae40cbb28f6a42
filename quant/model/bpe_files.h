// The files of a byte-level BPE tokenizer as Hugging Face ships them, read
// into a plain description (BpeTokenizer builds the encoder from it):
//   * tokenizer.json (the tokenizers package's format), or
//   * vocab.json + merges.txt (GPT-2's original format, what facebook/opt-*
//     ship),
// with tokenizer_config.json / special_tokens_map.json naming the special
// tokens. Pure parsing, torch-free, thread-safe.
#ifndef QAAS_QUANT_MODEL_BPE_FILES_H_
#define QAAS_QUANT_MODEL_BPE_FILES_H_

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace qaas::quant {

// A token matched whole in the text before pre-tokenization.
struct BpeAddedToken {
  std::string content;
  int id = -1;
  // Matched after normalization; tokenizers cuts the non-normalized tokens
  // out first. (We run no normalizer, so only the order differs.)
  bool normalized = false;
};

struct BpeSpec {
  std::string source;  // the file the vocabulary and merges came from, for messages
  std::unordered_map<std::string, int> vocab;               // byte-level strings -> ids
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::vector<BpeAddedToken> added_tokens;
  bool add_prefix_space = false;  // ByteLevel: " " before text that does not start with one
  // Split(regex, Isolated) + ByteLevel(use_regex=false) (Llama 3, Qwen2):
  // the regex; "" for ByteLevel's own GPT-2 regex.
  std::string split_regex;
  // The normalizer's steps, in order: NFC (Qwen2); SentencePiece-style
  // conversions' Prepend("▁") (Llama 2, legacy) and Replace(" ", "▁").
  struct NormalizerStep {
    enum Kind { kNfc, kPrepend, kReplace } kind;
    std::string text;     // kPrepend: what is prepended; kReplace: the pattern
    std::string content;  // kReplace: its replacement
  };
  std::vector<NormalizerStep> normalizer;
  // false for SentencePiece-style tokenizer.json (no ByteLevel step): BPE
  // runs on the text's characters as written, one word per text segment.
  bool byte_level = true;
  // A character not in the vocabulary becomes its UTF-8 bytes' <0xXX>
  // tokens (SentencePiece's byte fallback); without, <unk>.
  bool byte_fallback = false;
  // The Metaspace pre-tokenizer (split=false): spaces become `replacement`,
  // which is prepended to a segment that does not start with it: every
  // segment ("always"), the text's first ("first"), or none ("never").
  bool metaspace = false;
  // Split(String pattern, MergedWithPrevious) (Gemma's converter): words end
  // after each occurrence of the pattern; "" none.
  std::string split_string;
  std::string metaspace_replacement = "\xe2\x96\x81";  // "▁"
  std::string metaspace_prepend = "always";
  bool ignore_merges = false;     // a word found whole in the vocabulary skips BPE
  std::string unk_token;          // "" when none: unknown characters are dropped
  bool fuse_unk = false;
  std::string bos_token;  // "" when none
  std::string eos_token;
  bool add_bos = false;  // transformers prepends bos_token with add_special_tokens=True
};

// Reads <dir>/tokenizer.json, or, when there is none, <dir>/vocab.json and
// <dir>/merges.txt.
//
// Special tokens: bos_token, eos_token, ... from tokenizer_config.json (which
// overrides special_tokens_map.json); else bos is the special token that
// tokenizer.json's post-processor template puts first; else <|endoftext|> for
// both when the vocabulary has it (GPT2Tokenizer's default). add_bos is
// tokenizer_config.json's add_bos_token, else whether the template starts
// with a special token. For vocab.json + merges.txt, the added tokens are
// tokenizer_config.json's added_tokens_decoder and the special tokens it
// names, and add_prefix_space comes from it.
//
// NotFound when neither form is present. InvalidArgument for malformed files,
// naming the file and the field (a special token named but missing from
// vocab.json included). Unimplemented for what BpeTokenizer does not run,
// naming it: a model other than BPE, BPE dropout, subword prefixes/suffixes,
// byte fallback, a normalizer, a pre-tokenizer other than ByteLevel with
// GPT-2's regex, added tokens with lstrip/rstrip/single_word.
absl::StatusOr<BpeSpec> ReadBpeFiles(const std::string& dir);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_BPE_FILES_H_
