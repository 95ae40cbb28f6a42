#include "quant/eval/tasks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "quant/model/unicode_classes.h"
#include "quant/model/utf8.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

namespace {

// [begin, end) of s without its leading and trailing Python whitespace
// ({0, 0} when s is all whitespace: all of it trails).
std::pair<size_t, size_t> NonSpaceSpan(absl::string_view s) {
  size_t begin = 0, end = 0;
  bool seen = false;
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    const size_t n = DecodeUtf8(s, i, &cp);
    if (!PyIsSpace(cp)) {
      if (!seen) begin = i;
      seen = true;
      end = i + n;
    }
    i += n;
  }
  return {begin, end};
}

// Python's str.capitalize for ASCII letters (the data's ctx_b is ASCII):
// the first character upper-cased, the rest lower-cased.
std::string Capitalize(absl::string_view s) {
  std::string out(s);
  for (size_t i = 0; i < out.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(out[i]);
    if (c >= 0x80) continue;
    out[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return out;
}

// A document's fields, read with errors naming the file, line and field.
class DocReader {
 public:
  DocReader(const nlohmann::json& j, const std::string& where) : j_(j), where_(where) {}

  absl::StatusOr<std::string> String(const char* field) const {
    QAAS_ASSIGN_OR_RETURN(const nlohmann::json* v, Field(field));
    if (!v->is_string()) return Wrong(field, "a string");
    return v->get<std::string>();
  }
  absl::StatusOr<std::vector<std::string>> Strings(const nlohmann::json& v, const std::string& field) const {
    if (!v.is_array()) return Wrong(field, "a list of strings");
    std::vector<std::string> out;
    for (const auto& e : v) {
      if (!e.is_string()) return Wrong(field, "a list of strings");
      out.push_back(e.get<std::string>());
    }
    if (out.empty()) return Wrong(field, "a non-empty list of strings");
    return out;
  }
  // An integer, or a string holding one (HellaSwag's label).
  absl::StatusOr<int64_t> Integer(const char* field) const {
    QAAS_ASSIGN_OR_RETURN(const nlohmann::json* v, Field(field));
    if (v->is_number_integer()) return v->get<int64_t>();
    if (v->is_string()) {
      int64_t x = 0;
      const std::string s = v->get<std::string>();
      if (!s.empty() && absl::SimpleAtoi(s, &x)) return x;
    }
    return Wrong(field, "an integer");
  }
  absl::StatusOr<const nlohmann::json*> Field(const std::string& field) const {
    if (!j_.contains(field) || j_[field].is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(where_, ": field '", field, "' is missing"));
    }
    return &j_[field];
  }
  absl::Status Wrong(const std::string& field, const char* what) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ": field '", field, "' is not ", what));
  }
  absl::Status Bad(const std::string& field, const std::string& why) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ": field '", field, "' ", why));
  }
  const nlohmann::json& json() const { return j_; }

 private:
  const nlohmann::json& j_;
  const std::string& where_;
};

// Multiple choice with one context: a request per choice (" " + choice).
void AddChoices(const std::string& context, const std::vector<std::string>& choices, TaskDoc* doc) {
  for (const std::string& c : choices) {
    doc->requests.push_back({context, " " + c});
    doc->choice_chars.push_back(CodePoints(c));
  }
}

absl::Status CheckGold(const DocReader& r, const char* field, int64_t gold, size_t choices, TaskDoc* doc) {
  if (gold < 0 || gold >= static_cast<int64_t>(choices)) {
    return r.Bad(field, absl::StrCat("is ", gold, ", not the index of one of the ", choices, " choices"));
  }
  doc->gold = static_cast<int>(gold);
  return absl::OkStatus();
}

absl::Status BuildDoc(const std::string& task, const DocReader& r, TaskDoc* doc) {
  if (task == "piqa") {
    QAAS_ASSIGN_OR_RETURN(const std::string goal, r.String("goal"));
    QAAS_ASSIGN_OR_RETURN(const std::string sol1, r.String("sol1"));
    QAAS_ASSIGN_OR_RETURN(const std::string sol2, r.String("sol2"));
    QAAS_ASSIGN_OR_RETURN(const int64_t label, r.Integer("label"));
    AddChoices("Question: " + goal + "\nAnswer:", {sol1, sol2}, doc);
    return CheckGold(r, "label", label, 2, doc);
  }
  if (task == "arc_easy" || task == "arc_challenge") {
    QAAS_ASSIGN_OR_RETURN(const std::string question, r.String("question"));
    QAAS_ASSIGN_OR_RETURN(const nlohmann::json* choices, r.Field("choices"));
    if (!choices->is_object()) return r.Wrong("choices", "an object with 'text' and 'label' lists");
    if (!choices->contains("text")) return r.Field("choices.text").status();
    if (!choices->contains("label")) return r.Field("choices.label").status();
    QAAS_ASSIGN_OR_RETURN(const auto text, r.Strings((*choices)["text"], "choices.text"));
    QAAS_ASSIGN_OR_RETURN(const auto labels, r.Strings((*choices)["label"], "choices.label"));
    if (labels.size() != text.size()) {
      return r.Bad("choices.label", absl::StrCat("has ", labels.size(), " labels for ", text.size(), " choices"));
    }
    QAAS_ASSIGN_OR_RETURN(const std::string key, r.String("answerKey"));
    const auto it = std::find(labels.begin(), labels.end(), key);
    if (it == labels.end()) return r.Bad("answerKey", absl::StrCat("'", key, "' is not one of choices.label"));
    AddChoices("Question: " + question + "\nAnswer:", text, doc);
    doc->gold = static_cast<int>(it - labels.begin());
    return absl::OkStatus();
  }
  if (task == "hellaswag") {
    QAAS_ASSIGN_OR_RETURN(const std::string activity, r.String("activity_label"));
    QAAS_ASSIGN_OR_RETURN(const std::string ctx_a, r.String("ctx_a"));
    QAAS_ASSIGN_OR_RETURN(const std::string ctx_b, r.String("ctx_b"));
    QAAS_ASSIGN_OR_RETURN(const nlohmann::json* endings_json, r.Field("endings"));
    QAAS_ASSIGN_OR_RETURN(auto endings, r.Strings(*endings_json, "endings"));
    QAAS_ASSIGN_OR_RETURN(const int64_t label, r.Integer("label"));
    for (std::string& e : endings) e = HellaswagPreprocess(e);
    AddChoices(HellaswagPreprocess(activity + ": " + ctx_a + " " + Capitalize(ctx_b)), endings, doc);
    return CheckGold(r, "label", label, endings.size(), doc);
  }
  if (task == "winogrande") {
    QAAS_ASSIGN_OR_RETURN(const std::string sentence, r.String("sentence"));
    QAAS_ASSIGN_OR_RETURN(const std::string option1, r.String("option1"));
    QAAS_ASSIGN_OR_RETURN(const std::string option2, r.String("option2"));
    QAAS_ASSIGN_OR_RETURN(const std::string answer, r.String("answer"));
    const size_t blank = sentence.find('_');
    if (blank == std::string::npos) return r.Bad("sentence", "has no '_' blank");
    if (answer != "1" && answer != "2") return r.Bad("answer", absl::StrCat("is '", answer, "', not '1' or '2'"));
    // Partial scoring: each option completes the context; the continuation
    // (the sentence after the blank) is scored under both.
    const std::string continuation = " " + PyStrip(absl::string_view(sentence).substr(blank + 1));
    for (const std::string* option : {&option1, &option2}) {
      doc->requests.push_back({sentence.substr(0, blank) + *option, continuation});
      doc->choice_chars.push_back(CodePoints(*option));
    }
    doc->gold = answer == "1" ? 0 : 1;
    return absl::OkStatus();
  }
  if (task == "boolq") {
    QAAS_ASSIGN_OR_RETURN(const std::string passage, r.String("passage"));
    QAAS_ASSIGN_OR_RETURN(const std::string question, r.String("question"));
    int64_t label = 0;
    // The Hugging Face boolq has `answer` (a boolean); super_glue's has `label` (0/1).
    if (r.json().contains("answer") && !r.json()["answer"].is_null()) {
      if (!r.json()["answer"].is_boolean()) return r.Wrong("answer", "a boolean");
      label = r.json()["answer"].get<bool>() ? 1 : 0;
    } else if (r.json().contains("label") && !r.json()["label"].is_null()) {
      QAAS_ASSIGN_OR_RETURN(label, r.Integer("label"));
    } else {
      return r.Field("answer").status();
    }
    AddChoices(passage + "\nQuestion: " + question + "?\nAnswer:", {"no", "yes"}, doc);
    return CheckGold(r, "answer", label, 2, doc);
  }
  if (task == "lambada_openai") {
    QAAS_ASSIGN_OR_RETURN(const std::string text, r.String("text"));
    // The last word after splitting on the space character (not on any whitespace).
    const size_t space = text.rfind(' ');
    if (space == std::string::npos) {
      doc->requests.push_back({"", " " + text});
    } else {
      doc->requests.push_back({text.substr(0, space), " " + text.substr(space + 1)});
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(UnknownTaskMessage(task));
}

}  // namespace

bool PyIsSpace(char32_t c) { return IsUnicodeWhitespace(c) || (c >= 0x1c && c <= 0x1f); }

std::string PyStrip(absl::string_view s) {
  const auto [begin, end] = NonSpaceSpan(s);
  return std::string(s.substr(begin, end - begin));
}

int64_t CodePoints(absl::string_view s) {
  int64_t n = 0;
  char32_t cp;
  for (size_t i = 0; i < s.size(); i += DecodeUtf8(s, i, &cp)) ++n;
  return n;
}

std::string HellaswagPreprocess(absl::string_view text) {
  std::string t = absl::StrReplaceAll(PyStrip(text), {{" [title]", ". "}});
  // Remove every "[...]" match of the regex \[.*?\] (no newline inside).
  std::string out;
  size_t i = 0;
  while (i < t.size()) {
    if (t[i] == '[') {
      const size_t close = t.find_first_of("]\n", i + 1);
      if (close != std::string::npos && t[close] == ']') {
        i = close + 1;
        continue;
      }
    }
    out += t[i++];
  }
  return absl::StrReplaceAll(out, {{"  ", " "}});
}

absl::StatusOr<std::vector<TaskDoc>> LoadTaskDocs(const TaskInfo& task, const std::string& path,
                                                  const std::string& display, int64_t limit, std::string* text) {
  auto raw = ReadFile(path);
  if (!raw.ok()) {
    return absl::Status(raw.status().code(),
                        absl::StrReplaceAll(raw.status().message(), {{path, display}}));
  }
  std::vector<TaskDoc> docs;
  std::istringstream lines(*raw);
  if (text != nullptr) *text = *raw;
  std::string line;
  int64_t number = 0;
  while (std::getline(lines, line) && (limit <= 0 || static_cast<int64_t>(docs.size()) < limit)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(display, " line ", number);
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object (", task.name, " document)"));
    }
    TaskDoc doc;
    doc.doc_id = static_cast<int64_t>(docs.size());
    QAAS_RETURN_IF_ERROR(BuildDoc(task.name, DocReader(j, where), &doc));
    docs.push_back(std::move(doc));
  }
  if (docs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(display, ": no ", task.name, " document"));
  }
  return docs;
}

EncodedRequest EncodeRequest(const Tokenizer& tokenizer, const TaskRequest& request) {
  EncodedRequest out;
  const int bos = tokenizer.add_bos() ? tokenizer.bos_id() : -1;
  auto encode = [&](absl::string_view s, bool with_bos) {
    std::vector<int> ids = tokenizer.Encode(s);
    if (with_bos && bos >= 0) ids.insert(ids.begin(), bos);
    return ids;
  };
  if (request.context.empty()) {
    // The harness's empty context: the prefix token (BOS, else EOS) is the
    // context; the continuation is encoded alone.
    const int prefix = tokenizer.bos_id() >= 0 ? tokenizer.bos_id() : tokenizer.eos_id();
    out.continuation = encode(request.continuation, false);
    out.context = {prefix};
    if (!out.continuation.empty() && out.continuation.front() == prefix) {
      out.continuation.erase(out.continuation.begin());
    }
    return out;
  }
  std::string context = request.context, continuation = request.continuation;
  if (const size_t n = context.size() - NonSpaceSpan(context).second; n > 0) {
    continuation = context.substr(context.size() - n) + continuation;
    context.resize(context.size() - n);
  }
  const std::vector<int> whole = encode(context + continuation, true);
  out.context = encode(context, true);
  const size_t n = std::min(out.context.size(), whole.size());
  out.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return out;
}

PythonRandom::PythonRandom(uint32_t seed) {
  // init_genrand(19650218), then init_by_array({seed}).
  mt_[0] = 19650218u;
  for (int i = 1; i < 624; ++i) mt_[i] = 1812433253u * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  // The key is the one word `seed`: its index j is always 0.
  int i = 1;
  for (int k = 624; k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + seed;
    ++i;
    if (i >= 624) {
      mt_[0] = mt_[623];
      i = 1;
    }
  }
  for (int k = 623; k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    ++i;
    if (i >= 624) {
      mt_[0] = mt_[623];
      i = 1;
    }
  }
  mt_[0] = 0x80000000u;
}

uint32_t PythonRandom::Next32() {
  if (index_ >= 624) {
    for (int k = 0; k < 624; ++k) {
      const uint32_t y = (mt_[k] & 0x80000000u) | (mt_[(k + 1) % 624] & 0x7fffffffu);
      mt_[k] = mt_[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    index_ = 0;
  }
  uint32_t y = mt_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

double PythonRandom::Random() {
  const uint32_t a = Next32() >> 5, b = Next32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

namespace {

double Mean(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v;
  return s / static_cast<double>(x.size());
}

// The sample standard deviation (n - 1); NaN for fewer than two values.
double SampleStddev(const std::vector<double>& x) {
  if (x.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  const double mu = Mean(x);
  double s = 0;
  for (double v : x) s += (v - mu) * (v - mu);
  return std::sqrt(s / static_cast<double>(x.size() - 1));
}

MetricValue MeanMetric(const std::vector<double>& x) {
  return {Mean(x), SampleStddev(x) / std::sqrt(static_cast<double>(x.size()))};
}

// numpy.argmax: the first index of the largest value.
template <typename F>
int ArgMax(size_t n, F value) {
  int best = 0;
  for (size_t k = 1; k < n; ++k) {
    if (value(k) > value(static_cast<size_t>(best))) best = static_cast<int>(k);
  }
  return best;
}

}  // namespace

double BootstrapPerplexityStderr(const std::vector<double>& lls, int iters) {
  const int chunk = std::min(1000, iters);
  if (lls.size() < 2 || chunk <= 0) return std::numeric_limits<double>::quiet_NaN();
  const double n = static_cast<double>(lls.size());
  std::vector<double> replicates;
  replicates.reserve(static_cast<size_t>(iters / chunk) * chunk);
  for (int i = 0; i < iters / chunk; ++i) {
    PythonRandom rnd(static_cast<uint32_t>(i));
    for (int r = 0; r < chunk; ++r) {
      double sum = 0;
      for (size_t k = 0; k < lls.size(); ++k) sum += lls[static_cast<size_t>(std::floor(rnd.Random() * n))];
      replicates.push_back(std::exp(-(sum / n)));
    }
  }
  return SampleStddev(replicates);
}

TaskScores ScoreTask(const TaskInfo& task, const std::vector<TaskDoc>& docs,
                     const std::vector<std::vector<RequestScore>>& scores, int bootstrap_iters) {
  TaskScores out;
  out.docs = static_cast<int64_t>(docs.size());
  std::vector<double> acc, acc_norm, lls;
  for (size_t d = 0; d < docs.size(); ++d) {
    const std::vector<RequestScore>& s = scores[d];
    if (!task.multiple_choice) {
      lls.push_back(s[0].ll);
      acc.push_back(s[0].greedy ? 1.0 : 0.0);
      continue;
    }
    const int pred = ArgMax(s.size(), [&](size_t k) { return s[k].ll; });
    acc.push_back(pred == docs[d].gold ? 1.0 : 0.0);
    if (task.acc_norm) {
      const int pred_norm = ArgMax(s.size(), [&](size_t k) {
        return s[k].ll / static_cast<double>(docs[d].choice_chars[k]);
      });
      acc_norm.push_back(pred_norm == docs[d].gold ? 1.0 : 0.0);
    }
  }
  for (double a : acc) out.correct.push_back(a > 0.5 ? 1 : 0);
  out.acc = MeanMetric(acc);
  if (task.acc_norm) out.acc_norm = MeanMetric(acc_norm);
  if (!task.multiple_choice) {
    out.perplexity = MetricValue{std::exp(-Mean(lls)), BootstrapPerplexityStderr(lls, bootstrap_iters)};
  }
  return out;
}

}  // namespace qaas::quant
