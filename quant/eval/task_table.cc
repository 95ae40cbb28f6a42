#include "quant/eval/task_table.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace qaas::quant {

const std::vector<TaskInfo>& KnownTasks() {
  static const std::vector<TaskInfo> kTasks = {
      {"piqa", "piqa.validation.jsonl", true, true},
      {"arc_easy", "arc_easy.validation.jsonl", true, true},
      {"arc_challenge", "arc_challenge.validation.jsonl", true, true},
      {"hellaswag", "hellaswag.validation.jsonl", true, true},
      {"winogrande", "winogrande.validation.jsonl", true, false},
      {"boolq", "boolq.validation.jsonl", true, false},
      {"lambada_openai", "lambada_openai.test.jsonl", false, false},
  };
  return kTasks;
}

const TaskInfo* FindTask(absl::string_view name) {
  for (const TaskInfo& t : KnownTasks()) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string KnownTaskNames() {
  std::vector<std::string> names;
  for (const TaskInfo& t : KnownTasks()) names.push_back(t.name);
  return absl::StrJoin(names, ", ");
}

std::string UnknownTaskMessage(absl::string_view name) {
  return absl::StrCat("unknown task '", name, "' (known: ", KnownTaskNames(), ")");
}

std::string TaskFileUri(absl::string_view data, const TaskInfo& task) {
  return absl::StrCat(absl::StripSuffix(data, "/"), "/", task.data_file);
}

}  // namespace qaas::quant
