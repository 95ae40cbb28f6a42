// The forward side of zero-shot tasks (tasks.h builds and scores the
// requests): each document's requests packed so that a context shared by
// several continuations is computed once, the packed sequences batched by
// length, carried through the model layer by layer (as the pipeline carries
// its streams), and the continuations' log-likelihoods read off the final
// hidden states.
//
// Packing: the requests of a document with the same context tokens form one
// sequence [context, continuation 1 but its last token, continuation 2 but
// its last token, ...]; a continuation's tokens sit at the positions they
// would have after the context alone and attend to the context and to
// themselves only (TokenLayout), so every log-probability is the one a
// separate forward of context + continuation gives (the harness's input:
// (context + continuation)[:-1]). A request longer than max_length + 1
// tokens is truncated from the left as the harness does (its last
// max_length + 1 tokens, positions from 0) and runs alone.
#ifndef QAAS_QUANT_EVAL_TASK_EVAL_H_
#define QAAS_QUANT_EVAL_TASK_EVAL_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/eval/tasks.h"
#include "quant/model/decoder.h"

namespace qaas::quant {

// A task's documents, tokenized.
struct TaskInput {
  const TaskInfo* task = nullptr;
  std::string name;  // what errors and the report call it (the job's uri)
  std::vector<TaskDoc> docs;
  std::vector<std::vector<EncodedRequest>> encoded;  // [doc][request]
};

// TaskInput of `docs`, encoded with `tokenizer` (tasks.h's EncodeRequest).
TaskInput EncodeTask(const TaskInfo& task, std::string name, std::vector<TaskDoc> docs, const Tokenizer& tokenizer);

// What packing did to a task.
struct TaskPackStats {
  int64_t requests = 0;
  int64_t truncated = 0;       // requests cut from the left (longer than max_length + 1 tokens)
  int64_t truncated_docs = 0;  // documents with a truncated request
  int64_t tokens = 0;          // tokens one forward computes (shared contexts once, no padding)
  int64_t request_tokens = 0;  // tokens of the requests' inputs one by one (what sharing saves from)
};

class TaskEvaluator {
 public:
  // Packs the tasks' requests into batches of at most `token_budget` tokens
  // (padding included; a longer sequence runs alone). InvalidArgument naming
  // the task, document and lengths when a continuation is longer than
  // max_length (the harness refuses those too).
  static absl::StatusOr<TaskEvaluator> Create(std::vector<TaskInput> inputs, int64_t max_length,
                                              int64_t token_budget, const at::Device& device);

  // The batches' embeddings, one hidden-state tensor [B, T, hidden] per batch.
  std::vector<at::Tensor> Embed(const DecoderModel& model) const;
  // Every batch's hidden states through `layer`.
  void Forward(const DecoderModel& model, const DecoderLayer& layer, std::vector<at::Tensor>* hidden) const;
  // From final hidden states: scores[task][doc][request]. FailedPrecondition
  // naming the task and document when a log-likelihood is not finite.
  absl::StatusOr<std::vector<std::vector<std::vector<RequestScore>>>> Score(
      const DecoderModel& model, const std::vector<at::Tensor>& hidden) const;

  const std::vector<TaskInput>& inputs() const { return inputs_; }
  const std::vector<TaskPackStats>& stats() const { return stats_; }
  int64_t max_length() const { return max_length_; }
  size_t num_batches() const { return batches_.size(); }
  // Padded tokens of all batches (what a forward computes).
  int64_t padded_tokens() const;

 private:
  struct Slot {  // a request's scored positions in its batch
    int task = 0, doc = 0, request = 0;
    int64_t first = 0, count = 0;  // into the batch's score_rows / targets
  };
  struct Batch {
    at::Tensor ids;         // int64 [B, T], on the device
    TokenLayout layout;     // on the device
    at::Tensor score_rows;  // int64 [S], rows b * T + t of the flattened hidden states
    at::Tensor targets;     // int64 [S], the token each row predicts
    std::vector<Slot> slots;
  };

  TaskEvaluator() = default;

  std::vector<TaskInput> inputs_;
  std::vector<TaskPackStats> stats_;
  std::vector<Batch> batches_;
  int64_t max_length_ = 0;
};

}  // namespace qaas::quant

#endif  // QAAS_QUANT_EVAL_TASK_EVAL_H_
