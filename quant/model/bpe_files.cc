#include "quant/model/bpe_files.h"

#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

using nlohmann::json;

constexpr absl::string_view kGpt2EndOfText = "<|endoftext|>";

absl::StatusOr<json> ReadJson(const std::string& path) {
  QAAS_ASSIGN_OR_RETURN(auto text, ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  return j;
}

// A special-token setting: "</s>", or {"content": "</s>", ...} as older
// transformers wrote it. "" when it is neither.
std::string TokenContent(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

absl::Status GetBool(const json& j, const char* key, const std::string& where, bool* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": '", key, "' must be a boolean"));
  }
  *out = j[key].get<bool>();
  return absl::OkStatus();
}

// What tokenizer_config.json and special_tokens_map.json say.
struct SpecialTokenConfig {
  std::map<std::string, std::string> named;  // "bos_token" -> "</s>", ...
  std::vector<std::string> additional;       // additional_special_tokens
  std::optional<bool> add_bos;
  std::optional<bool> add_prefix_space;
  json added_tokens_decoder;  // {"<id>": {"content": ...}}, or null
};

absl::StatusOr<SpecialTokenConfig> ReadSpecialTokenConfig(const std::string& dir) {
  SpecialTokenConfig c;
  // tokenizer_config.json is read last: it overrides special_tokens_map.json.
  for (const char* name : {"special_tokens_map.json", "tokenizer_config.json"}) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (!FileExists(path)) continue;
    QAAS_ASSIGN_OR_RETURN(auto j, ReadJson(path));
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                            "cls_token", "mask_token"}) {
      if (!j.contains(key) || j[key].is_null()) continue;
      const std::string content = TokenContent(j[key]);
      if (content.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' is not a token"));
      }
      c.named[key] = content;
    }
    if (j.contains("additional_special_tokens") && j["additional_special_tokens"].is_array()) {
      for (const auto& v : j["additional_special_tokens"]) {
        if (const std::string content = TokenContent(v); !content.empty()) {
          c.additional.push_back(content);
        }
      }
    }
    bool flag = false;
    if (j.contains("add_bos_token") && !j["add_bos_token"].is_null()) {
      QAAS_RETURN_IF_ERROR(GetBool(j, "add_bos_token", path, &flag));
      c.add_bos = flag;
    }
    if (j.contains("add_prefix_space") && !j["add_prefix_space"].is_null()) {
      QAAS_RETURN_IF_ERROR(GetBool(j, "add_prefix_space", path, &flag));
      c.add_prefix_space = flag;
    }
    if (j.contains("added_tokens_decoder")) c.added_tokens_decoder = j["added_tokens_decoder"];
  }
  return c;
}

// One added token's settings; lstrip/rstrip/single_word change where it
// matches, which we do not implement.
absl::Status CheckAddedTokenFlags(const json& t, const std::string& content,
                                  const std::string& where) {
  for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
    bool on = false;
    QAAS_RETURN_IF_ERROR(GetBool(t, flag, where, &on));
    if (on) {
      return absl::UnimplementedError(absl::StrCat(where, ": added token '", content, "' has ",
                                                   flag, "=true, which is not supported"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseVocab(const json& v, const std::string& where,
                        std::unordered_map<std::string, int>* vocab) {
  if (!v.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= (int64_t{1} << 30)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": id of '", it.key(), "' is not a valid id: ", it.value().dump()));
    }
    (*vocab)[it.key()] = it.value().get<int>();
  }
  if (vocab->empty()) return absl::InvalidArgumentError(absl::StrCat(where, " is empty"));
  return absl::OkStatus();
}

// The first special token of a post-processor's single-sequence template
// ("</s> $A" -> "</s>"), searching Sequence post-processors too; "" if none.
std::string TemplateBos(const json& p) {
  if (!p.is_object() || !p.contains("type") || !p["type"].is_string()) return "";
  const std::string type = p["type"].get<std::string>();
  if (type == "Sequence" && p.contains("processors") && p["processors"].is_array()) {
    for (const auto& q : p["processors"]) {
      if (std::string bos = TemplateBos(q); !bos.empty()) return bos;
    }
  }
  if (type != "TemplateProcessing" || !p.contains("single") || !p["single"].is_array() ||
      p["single"].empty()) {
    return "";
  }
  const json& first = p["single"][0];
  if (first.is_object() && first.contains("SpecialToken") && first["SpecialToken"].contains("id") &&
      first["SpecialToken"]["id"].is_string()) {
    return first["SpecialToken"]["id"].get<std::string>();
  }
  return "";
}

// The two parts of a merge written "a b"; InvalidArgument otherwise.
absl::Status SplitMerge(absl::string_view s, const std::string& where, BpeSpec* spec) {
  const std::vector<absl::string_view> parts = absl::StrSplit(s, ' ');
  if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": merge '", s, "' is not two tokens"));
  }
  spec->merges.emplace_back(std::string(parts[0]), std::string(parts[1]));
  return absl::OkStatus();
}

// A normalizer (or a Sequence of them) into spec->normalizer: NFC,
// Prepend, Replace with a string pattern.
absl::Status ParseNormalizer(const json& n, const std::string& p, BpeSpec* spec) {
  const std::string type = n.is_object() && n.contains("type") && n["type"].is_string() ? n["type"].get<std::string>()
                                                                                       : n.dump();
  const std::string supported = "NFC, Prepend, Replace of a string, or a Sequence of them";
  if (type == "Sequence") {
    if (!n.contains("normalizers") || !n["normalizers"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(p, ": normalizer Sequence has no 'normalizers' list"));
    }
    for (const json& step : n["normalizers"]) QAAS_RETURN_IF_ERROR(ParseNormalizer(step, p, spec));
    return absl::OkStatus();
  }
  if (type == "NFC") {
    spec->normalizer.push_back({BpeSpec::NormalizerStep::kNfc, "", ""});
    return absl::OkStatus();
  }
  if (type == "Prepend") {
    if (!n.contains("prepend") || !n["prepend"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(p, ": normalizer Prepend has no 'prepend' string"));
    }
    spec->normalizer.push_back({BpeSpec::NormalizerStep::kPrepend, n["prepend"].get<std::string>(), ""});
    return absl::OkStatus();
  }
  if (type == "Replace") {
    const json pattern = n.contains("pattern") ? n["pattern"] : json();
    if (!pattern.is_object() || !pattern.contains("String") || !pattern["String"].is_string() ||
        pattern["String"].get<std::string>().empty()) {
      return absl::UnimplementedError(absl::StrCat(p, ": normalizer Replace pattern ", pattern.dump(),
                                                   " is not supported (a non-empty String)"));
    }
    if (!n.contains("content") || !n["content"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(p, ": normalizer Replace has no 'content' string"));
    }
    spec->normalizer.push_back(
        {BpeSpec::NormalizerStep::kReplace, pattern["String"].get<std::string>(), n["content"].get<std::string>()});
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat(p, ": normalizer ", type, " is not supported (", supported, ")"));
}

// tokenizer.json: the model, the pipeline around it, the added tokens.
absl::Status ReadTokenizerJson(const std::string& p, BpeSpec* spec, std::string* template_bos) {
  QAAS_ASSIGN_OR_RETURN(auto j, ReadJson(p));
  if (!j.contains("model") || !j["model"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(p, ": missing 'model'"));
  }
  const json& m = j["model"];
  const std::string type = m.contains("type") && m["type"].is_string()
                               ? m["type"].get<std::string>()
                               : (m.contains("merges") ? "BPE" : "");
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat(p, ": model.type '", type, "' is not supported (byte-level BPE only)"));
  }
  if (m.contains("dropout") && !m["dropout"].is_null()) {
    return absl::UnimplementedError(
        absl::StrCat(p, ": model.dropout (BPE dropout) is not supported"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() &&
        !(m[key].is_string() && m[key].get<std::string>().empty())) {
      return absl::UnimplementedError(absl::StrCat(p, ": model.", key, " is not supported"));
    }
  }
  QAAS_RETURN_IF_ERROR(GetBool(m, "byte_fallback", p + ": model", &spec->byte_fallback));
  QAAS_RETURN_IF_ERROR(GetBool(m, "ignore_merges", p + ": model", &spec->ignore_merges));
  QAAS_RETURN_IF_ERROR(GetBool(m, "fuse_unk", p + ": model", &spec->fuse_unk));
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    if (!m["unk_token"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(p, ": model.unk_token is not a string"));
    }
    spec->unk_token = m["unk_token"].get<std::string>();
  }
  if (!m.contains("vocab")) {
    return absl::InvalidArgumentError(absl::StrCat(p, ": missing model.vocab"));
  }
  QAAS_RETURN_IF_ERROR(ParseVocab(m["vocab"], p + ": model.vocab", &spec->vocab));
  if (!m.contains("merges") || !m["merges"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(p, ": model.merges is not an array"));
  }
  for (const auto& merge : m["merges"]) {
    // "a b" (older files) or ["a", "b"] (tokenizers >= 0.20).
    if (merge.is_string()) {
      QAAS_RETURN_IF_ERROR(SplitMerge(merge.get<std::string>(), p, spec));
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      spec->merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(p, ": merge ", merge.dump(), " is not two tokens"));
    }
  }

  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    QAAS_RETURN_IF_ERROR(ParseNormalizer(j["normalizer"], p, spec));
  }
  const json pre = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json();
  const std::string pre_type = pre.is_object() && pre.contains("type") && pre["type"].is_string()
                                   ? pre["type"].get<std::string>()
                                   : pre.is_null() ? "none" : pre.dump();
  const std::string supported =
      "ByteLevel with GPT-2's regex, Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)], "
      "Metaspace(split=false), Split(String, MergedWithPrevious) or none";
  json byte_level = pre;
  if (pre_type == "Split") {
    // Gemma's converter: Split(" ", MergedWithPrevious) after a normalizer
    // that replaced the spaces; SentencePiece-style.
    const json pattern = pre.contains("pattern") ? pre["pattern"] : json();
    if (!pattern.is_object() || !pattern.contains("String") || !pattern["String"].is_string() ||
        pattern["String"].get<std::string>().empty() || pre.value("behavior", "") != "MergedWithPrevious" ||
        pre.value("invert", false)) {
      return absl::UnimplementedError(absl::StrCat(p, ": pre_tokenizer Split ", pre.dump(),
                                                   " is not supported alone (a String, MergedWithPrevious)"));
    }
    spec->byte_level = false;
    spec->split_string = pattern["String"].get<std::string>();
  } else if (pre_type == "none" || pre_type == "Metaspace") {
    // SentencePiece-style (Llama 2, Gemma conversions): no byte-level
    // alphabet; each text segment is one BPE word.
    spec->byte_level = false;
    if (pre_type == "Metaspace") {
      spec->metaspace = true;
      if (pre.contains("replacement")) {
        if (!pre["replacement"].is_string() || pre["replacement"].get<std::string>().empty()) {
          return absl::InvalidArgumentError(absl::StrCat(p, ": pre_tokenizer Metaspace replacement is not a string"));
        }
        spec->metaspace_replacement = pre["replacement"].get<std::string>();
      }
      bool split = true;
      QAAS_RETURN_IF_ERROR(GetBool(pre, "split", p + ": pre_tokenizer Metaspace", &split));
      if (split) {
        return absl::UnimplementedError(absl::StrCat(p, ": pre_tokenizer Metaspace with split=true is not supported"));
      }
      // Older files say add_prefix_space instead of prepend_scheme.
      bool add_prefix_space = true;
      QAAS_RETURN_IF_ERROR(GetBool(pre, "add_prefix_space", p + ": pre_tokenizer Metaspace", &add_prefix_space));
      spec->metaspace_prepend = add_prefix_space ? "always" : "never";
      if (pre.contains("prepend_scheme")) {
        const json& scheme = pre["prepend_scheme"];
        if (scheme != "always" && scheme != "first" && scheme != "never") {
          return absl::UnimplementedError(absl::StrCat(p, ": pre_tokenizer Metaspace prepend_scheme ", scheme.dump(),
                                                       " is not supported (always, first, never)"));
        }
        spec->metaspace_prepend = scheme.get<std::string>();
      }
    }
  } else if (pre_type == "Sequence") {
    // Llama 3 / Qwen2: a Split with the family's regex, then ByteLevel
    // mapping bytes only.
    const json& steps = pre.contains("pretokenizers") ? pre["pretokenizers"] : json();
    const bool shape = steps.is_array() && steps.size() == 2 && steps[0].is_object() && steps[1].is_object() &&
                       steps[0].value("type", "") == "Split" && steps[1].value("type", "") == "ByteLevel";
    if (!shape) {
      return absl::UnimplementedError(
          absl::StrCat(p, ": pre_tokenizer Sequence ", steps.dump(), " is not supported (", supported, ")"));
    }
    const json& split = steps[0];
    const json pattern = split.contains("pattern") ? split["pattern"] : json();
    if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string()) {
      return absl::UnimplementedError(absl::StrCat(p, ": pre_tokenizer Split pattern ", pattern.dump(),
                                                   " is not supported (a Regex)"));
    }
    if (split.value("behavior", "") != "Isolated" || split.value("invert", false)) {
      return absl::UnimplementedError(absl::StrCat(p, ": pre_tokenizer Split behavior ", split.value("behavior", ""),
                                                   split.value("invert", false) ? " inverted" : "",
                                                   " is not supported (Isolated)"));
    }
    spec->split_regex = pattern["Regex"].get<std::string>();
    byte_level = steps[1];
    bool use_regex = true;
    QAAS_RETURN_IF_ERROR(GetBool(byte_level, "use_regex", p + ": pre_tokenizer ByteLevel", &use_regex));
    if (use_regex) {
      return absl::UnimplementedError(
          absl::StrCat(p, ": pre_tokenizer Split then ByteLevel with use_regex=true is not supported"));
    }
  } else if (pre_type == "ByteLevel") {
    bool use_regex = true;
    QAAS_RETURN_IF_ERROR(GetBool(pre, "use_regex", p + ": pre_tokenizer", &use_regex));
    if (!use_regex) {
      return absl::UnimplementedError(
          absl::StrCat(p, ": pre_tokenizer ByteLevel with use_regex=false alone is not supported"));
    }
  } else {
    return absl::UnimplementedError(
        absl::StrCat(p, ": pre_tokenizer '", pre_type, "' is not supported (", supported, ")"));
  }
  if (spec->byte_fallback && spec->byte_level) {
    return absl::UnimplementedError(
        absl::StrCat(p, ": model.byte_fallback with a ByteLevel pre-tokenizer is not supported"));
  }
  if (spec->byte_level) {
    for (const auto& step : spec->normalizer) {
      if (step.kind != BpeSpec::NormalizerStep::kNfc) {
        return absl::UnimplementedError(absl::StrCat(
            p, ": normalizer Prepend/Replace with a ByteLevel pre-tokenizer is not supported (NFC only)"));
      }
    }
  }
  if (spec->byte_level) {
    QAAS_RETURN_IF_ERROR(
        GetBool(byte_level, "add_prefix_space", p + ": pre_tokenizer", &spec->add_prefix_space));
  }
  if (j.contains("post_processor")) *template_bos = TemplateBos(j["post_processor"]);

  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(p, ": added_tokens is not an array"));
    }
    for (const auto& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= (int64_t{1} << 30) ||
          !a.contains("content") || !a["content"].is_string() ||
          a["content"].get<std::string>().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(p, ": added token ", a.dump(), " needs an id and content"));
      }
      const std::string content = a["content"].get<std::string>();
      QAAS_RETURN_IF_ERROR(CheckAddedTokenFlags(a, content, p));
      bool normalized = false;
      QAAS_RETURN_IF_ERROR(GetBool(a, "normalized", p, &normalized));
      spec->added_tokens.push_back({content, a["id"].get<int>(), normalized});
    }
  }
  return absl::OkStatus();
}

// vocab.json + merges.txt, with the added tokens of tokenizer_config.json.
absl::Status ReadVocabAndMerges(const std::string& dir, const SpecialTokenConfig& config,
                                BpeSpec* spec) {
  const std::string vocab_path = dir + "/vocab.json", merges_path = dir + "/merges.txt";
  QAAS_ASSIGN_OR_RETURN(auto vocab, ReadJson(vocab_path));
  QAAS_RETURN_IF_ERROR(ParseVocab(vocab, vocab_path, &spec->vocab));
  QAAS_ASSIGN_OR_RETURN(auto merges, ReadFile(merges_path));
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(merges, '\n')) {
    ++line_no;
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && absl::StartsWith(line, "#version"))) continue;
    QAAS_RETURN_IF_ERROR(SplitMerge(line, absl::StrCat(merges_path, ": line ", line_no), spec));
  }
  spec->add_prefix_space = config.add_prefix_space.value_or(false);

  const std::string config_path = dir + "/tokenizer_config.json";
  if (config.added_tokens_decoder.is_object()) {
    for (auto it = config.added_tokens_decoder.begin(); it != config.added_tokens_decoder.end();
         ++it) {
      const json& a = it.value();
      int id = -1;
      if (!absl::SimpleAtoi(it.key(), &id) || id < 0 || !a.is_object() || TokenContent(a).empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            config_path, ": added_tokens_decoder entry '", it.key(), "' needs an id and content"));
      }
      QAAS_RETURN_IF_ERROR(CheckAddedTokenFlags(a, TokenContent(a), config_path));
      bool normalized = false;
      QAAS_RETURN_IF_ERROR(GetBool(a, "normalized", config_path, &normalized));
      spec->added_tokens.push_back({TokenContent(a), id, normalized});
    }
  }
  std::vector<std::string> specials = config.additional;
  for (const auto& [key, content] : config.named) specials.push_back(content);
  // GPT2Tokenizer's default bos, eos and unk.
  if (config.named.empty() && spec->vocab.count(std::string(kGpt2EndOfText)) > 0) {
    specials.emplace_back(kGpt2EndOfText);
  }
  for (const std::string& s : specials) {
    auto it = spec->vocab.find(s);
    if (it == spec->vocab.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": special token '", s, "' of tokenizer_config.json is not in vocab.json"));
    }
    spec->added_tokens.push_back({s, it->second, /*normalized=*/false});
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BpeSpec> ReadBpeFiles(const std::string& dir) {
  BpeSpec spec;
  std::string template_bos;
  const std::string json_path = dir + "/tokenizer.json";
  QAAS_ASSIGN_OR_RETURN(auto config, ReadSpecialTokenConfig(dir));
  if (FileExists(json_path)) {
    spec.source = json_path;
    QAAS_RETURN_IF_ERROR(ReadTokenizerJson(json_path, &spec, &template_bos));
  } else if (FileExists(dir + "/vocab.json") && FileExists(dir + "/merges.txt")) {
    spec.source = dir + "/merges.txt";
    QAAS_RETURN_IF_ERROR(ReadVocabAndMerges(dir, config, &spec));
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": no tokenizer.json or vocab.json + merges.txt"));
  }
  const bool has_end_of_text = spec.vocab.count(std::string(kGpt2EndOfText)) > 0;
  auto named = [&](const char* key, std::string fallback) {
    auto it = config.named.find(key);
    return it != config.named.end() ? it->second : fallback;
  };
  const std::string default_special = has_end_of_text ? std::string(kGpt2EndOfText) : "";
  spec.bos_token = named("bos_token", template_bos.empty() ? default_special : template_bos);
  spec.eos_token = named("eos_token", default_special);
  spec.add_bos = config.add_bos.value_or(!template_bos.empty());
  return spec;
}

}  // namespace qaas::quant
