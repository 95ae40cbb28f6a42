// The zero-shot tasks a job can ask for (JobSpec.tasks), by name, and the
// file each reads its documents from. Torch-free: the server validates task
// names with it; tasks.h scores them.
#ifndef QAAS_QUANT_EVAL_TASK_TABLE_H_
#define QAAS_QUANT_EVAL_TASK_TABLE_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace qaas::quant {

struct TaskInfo {
  std::string name;       // "piqa"
  std::string data_file;  // the file the task's documents are read from: "piqa.validation.jsonl"
  // multiple choice: the document's choices compete (acc); loglikelihood
  // (LAMBADA): one request, perplexity and greedy accuracy.
  bool multiple_choice = true;
  bool acc_norm = false;  // reports acc_norm (length-normalised by characters)
};

// The tasks we score, in a fixed order.
const std::vector<TaskInfo>& KnownTasks();
// nullptr when `name` is not one of KnownTasks().
const TaskInfo* FindTask(absl::string_view name);
// "piqa, arc_easy, ..." for error messages.
std::string KnownTaskNames();
// "unknown task 'mmlu' (known: piqa, ...)": every layer's message for a name
// FindTask does not know.
std::string UnknownTaskMessage(absl::string_view name);
// The uri of `task`'s file under the job's tasks.data prefix: <data>/<data_file>.
std::string TaskFileUri(absl::string_view data, const TaskInfo& task);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_EVAL_TASK_TABLE_H_
