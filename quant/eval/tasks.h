// Zero-shot tasks as lm-evaluation-harness (0.4) scores them with its
// Hugging Face backend: the documents of a task's JSONL file become
// (context, continuation) requests built as the harness's default task
// configs build them, the requests are tokenized as its HFLM does, and the
// per-request log-likelihoods become acc / acc_norm (or LAMBADA's perplexity
// and greedy accuracy) with the harness's standard errors. docs/tasks.md
// describes each task. Torch-free; the forward that produces the
// log-likelihoods is task_eval.h's.
#ifndef QAAS_QUANT_EVAL_TASKS_H_
#define QAAS_QUANT_EVAL_TASKS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quant/eval/task_table.h"
#include "quant/model/tokenizer.h"

namespace qaas::quant {

struct TaskRequest {
  std::string context;
  std::string continuation;  // with the target delimiter (" ") where the task adds one
};

struct TaskDoc {
  int64_t doc_id = 0;  // 0-based place in the file (blank lines skipped)
  std::vector<TaskRequest> requests;
  // Multiple choice: the gold request's index; per request, the length of
  // its choice in Unicode code points (acc_norm's divisor: the choice as the
  // task defines it, without the delimiter).
  int gold = 0;
  std::vector<int64_t> choice_chars;
};

// Reads the first `limit` documents (0: all) of `task` from the JSONL file at
// `path` and builds their requests. Errors name `display` (the job's uri for
// the file), the 1-based line and the field: InvalidArgument for malformed
// JSON, a missing field, a field of the wrong type or a gold answer that is
// not one of the choices; InvalidArgument naming the file when it holds no
// document. `text`, when given, receives the whole file (for a caller that
// fingerprints it, so the file is read once).
absl::StatusOr<std::vector<TaskDoc>> LoadTaskDocs(const TaskInfo& task, const std::string& path,
                                                  const std::string& display, int64_t limit,
                                                  std::string* text = nullptr);

// Python's str methods the task configs use, over UTF-8 text.
bool PyIsSpace(char32_t c);
std::string PyStrip(absl::string_view s);
int64_t CodePoints(absl::string_view s);
// HellaSwag's preprocess: strip, " [title]" -> ". ", drop "[...]" (no newline
// inside), "  " -> " ".
std::string HellaswagPreprocess(absl::string_view text);

// A request's token ids as HFLM's _encode_pair builds them: trailing
// whitespace of the context moves to the continuation; the context and the
// whole string are encoded (with BOS when the tokenizer adds one); the
// continuation is the whole encoding past the context's length.
struct EncodedRequest {
  std::vector<int> context;
  std::vector<int> continuation;
};
EncodedRequest EncodeRequest(const Tokenizer& tokenizer, const TaskRequest& request);

// One request's result: the summed log-probability of its continuation and
// whether every continuation token was the argmax.
struct RequestScore {
  double ll = 0;
  bool greedy = false;
};

// A metric's value over the documents and its standard error (NaN when the
// harness reports N/A: one document).
struct MetricValue {
  double value = 0;
  double stderr_ = 0;
};

struct TaskScores {
  int64_t docs = 0;
  std::optional<MetricValue> acc;
  std::optional<MetricValue> acc_norm;
  std::optional<MetricValue> perplexity;  // LAMBADA
  // Per document: 1 when the prediction (acc's) is right.
  std::vector<int> correct;
};

// The harness's metrics from per-request scores (`scores[d][r]` for document
// d's request r). `bootstrap_iters`: LAMBADA's perplexity stderr replicates
// (the harness's default 100000; 0 for none).
TaskScores ScoreTask(const TaskInfo& task, const std::vector<TaskDoc>& docs,
                     const std::vector<std::vector<RequestScore>>& scores, int bootstrap_iters = 100000);

// The harness's bootstrap standard error of perplexity = exp(-mean(lls)):
// replicates drawn in chunks of 1000, chunk i from Python's random.Random(i)
// (choices(lls, k=n)), and the sample standard deviation of the replicates.
double BootstrapPerplexityStderr(const std::vector<double>& lls, int iters);

// Python's random.Random(seed) for a non-negative integer seed below 2^32:
// MT19937 seeded by init_by_array, random() from two 32-bit draws.
class PythonRandom {
 public:
  explicit PythonRandom(uint32_t seed);
  uint32_t Next32();
  double Random();  // [0, 1), 53 bits

 private:
  uint32_t mt_[624];
  int index_ = 624;
};

}  // namespace qaas::quant

#endif  // QAAS_QUANT_EVAL_TASKS_H_
