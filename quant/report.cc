#include "quant/report.h"

#include <cmath>
#include <thread>

#include "absl/strings/str_format.h"

namespace qaas::quant {

nlohmann::json ToJson(const Report& r) {
  nlohmann::json j;
  j["model"] = r.model;
  j["scheme"] = r.scheme;
  j["recipe"] = r.recipe;
  j["num_layers"] = r.num_layers;
  j["calibration"] = r.calibration;
  j["evaluations"] = nlohmann::json::array();
  for (const auto& e : r.evaluations) {
    j["evaluations"].push_back({{"dataset", e.dataset},
                                {"seq_len", e.seq_len},
                                {"windows", e.windows},
                                {"tokens", e.tokens},
                                {"perplexity_original", e.perplexity_original},
                                {"perplexity_quantized", e.perplexity_quantized}});
  }
  if (r.tasks) {
    const TasksReport& t = *r.tasks;
    // NaN (the harness's N/A) as null: JSON has no NaN.
    auto number = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    nlohmann::json results = nlohmann::json::array();
    for (const TaskReport& task : t.tasks) {
      nlohmann::json metrics = nlohmann::json::object();
      for (const TaskMetricReport& m : task.metrics) {
        metrics[m.metric] = {{"original", number(m.original)},
                             {"original_stderr", number(m.original_stderr)},
                             {"quantized", number(m.quantized)},
                             {"quantized_stderr", number(m.quantized_stderr)},
                             {"delta", number(m.quantized - m.original)}};
      }
      results.push_back({{"task", task.task},
                         {"data", task.data},
                         {"docs", task.docs},
                         {"requests", task.requests},
                         {"truncated_requests", task.truncated_requests},
                         {"truncated_docs", task.truncated_docs},
                         {"tokens", task.tokens},
                         {"changed_docs", task.changed_docs},
                         {"metrics", metrics}});
    }
    j["tasks"] = {{"max_length", t.max_length}, {"limit", t.limit},     {"num_fewshot", 0},
                  {"seconds", t.seconds},       {"tokens", t.tokens},   {"tokens_per_second", t.tokens_per_second},
                  {"results", results}};
  }
  j["layers"] = nlohmann::json::array();
  for (const auto& l : r.layers) {
    nlohmann::json layer = {{"name", l.name},
                            {"method", l.method},
                            {"seconds", l.seconds},
                            {"relative_weight_error", l.relative_weight_error}};
    if (!l.group.empty()) layer["group"] = l.group;
    if (l.calibration_tokens >= 0) layer["calibration_tokens"] = l.calibration_tokens;
    if (!l.details.is_null()) layer["details"] = l.details;
    j["layers"].push_back(layer);
  }
  j["blocks"] = nlohmann::json::array();
  for (const auto& b : r.blocks) {
    nlohmann::json block = {{"index", b.index}, {"output_relative_error", b.output_relative_error}};
    if (!b.transforms.is_null()) block["transforms"] = b.transforms;
    j["blocks"].push_back(std::move(block));
  }
  j["size"] = {{"original_bytes", r.original_bytes}, {"quantized_bytes", r.quantized_bytes}};
  if (!r.artifact_format.empty()) j["artifact_format"] = r.artifact_format;
  j["seconds"] = {{"calibration", r.seconds_calibration},
                  {"quantization", r.seconds_quantization},
                  {"evaluation", r.seconds_evaluation},
                  {"total", r.seconds_total}};
  if (r.resumed_layers > 0) j["resumed_layers"] = r.resumed_layers;
  nlohmann::json memory = nlohmann::json::object();
  if (r.peak_host_memory_bytes) memory["peak_host_bytes"] = *r.peak_host_memory_bytes;
  if (r.peak_device_allocated_bytes) memory["peak_device_allocated_bytes"] = *r.peak_device_allocated_bytes;
  if (r.peak_device_reserved_bytes) memory["peak_device_reserved_bytes"] = *r.peak_device_reserved_bytes;
  if (!memory.empty()) j["memory"] = std::move(memory);
  j["environment"] = {{"qaas_version", QAAS_VERSION},
                      {"device", r.device},
                      {"hardware_threads", std::thread::hardware_concurrency()},
                      {"torch_version", r.torch_version},
                      {"cpu_capability", r.cpu_capability},
                      {"blas", r.blas}};
  return j;
}

std::string ToMarkdown(const Report& r) {
  std::string md = absl::StrFormat("# Quantization report\n\n- model: `%s`\n- scheme: %s\n- recipe:",
                                   r.model, r.scheme);
  for (const auto& m : r.recipe) md += " " + m;
  md += absl::StrFormat("\n- size: %d -> %d bytes\n- time: %.1f s (calibration %.1f, quantization %.1f, "
                        "evaluation %.1f)\n",
                        r.original_bytes, r.quantized_bytes, r.seconds_total, r.seconds_calibration,
                        r.seconds_quantization, r.seconds_evaluation);
  if (!r.artifact_format.empty()) md += absl::StrFormat("- artifact format: %s\n", r.artifact_format);
  constexpr double kMiB = 1024.0 * 1024.0;
  if (r.peak_host_memory_bytes) md += absl::StrFormat("- peak host memory: %.0f MiB\n", *r.peak_host_memory_bytes / kMiB);
  if (r.peak_device_reserved_bytes) {
    md += absl::StrFormat("- peak %s memory: %.0f MiB reserved, %.0f MiB in tensors\n", r.device,
                          *r.peak_device_reserved_bytes / kMiB, r.peak_device_allocated_bytes.value_or(0) / kMiB);
  }
  md += "\n";
  if (!r.evaluations.empty()) {
    md += "| dataset | seq_len | windows | perplexity original | perplexity quantized |\n|---|---|---|---|---|\n";
    for (const auto& e : r.evaluations) {
      md += absl::StrFormat("| %s | %d | %d | %.4f | %.4f |\n", e.dataset, e.seq_len, e.windows,
                            e.perplexity_original, e.perplexity_quantized);
    }
  }
  if (r.tasks && !r.tasks->tasks.empty()) {
    const TasksReport& t = *r.tasks;
    md += absl::StrFormat("\nZero-shot tasks (lm-evaluation-harness scoring, 0-shot, max_length %d%s): %.1f s, "
                          "%.0f tokens/s\n\n",
                          t.max_length, t.limit > 0 ? absl::StrFormat(", first %d documents", t.limit) : "",
                          t.seconds, t.tokens_per_second);
    md += "| task | docs | metric | original | quantized | difference |\n|---|---|---|---|---|---|\n";
    auto value = [](double v, double err) {
      return std::isfinite(err) ? absl::StrFormat("%.4f ± %.4f", v, err) : absl::StrFormat("%.4f", v);
    };
    for (const TaskReport& task : t.tasks) {
      for (const TaskMetricReport& m : task.metrics) {
        md += absl::StrFormat("| %s | %d | %s | %s | %s | %+.4f |\n", task.task, task.docs, m.metric,
                              value(m.original, m.original_stderr), value(m.quantized, m.quantized_stderr),
                              m.quantized - m.original);
      }
    }
    for (const TaskReport& task : t.tasks) {
      if (task.truncated_requests > 0) {
        md += absl::StrFormat("\n%s: %d requests of %d documents were longer than max_length + 1 tokens and were "
                              "truncated from the left, as the harness does.",
                              task.task, task.truncated_requests, task.truncated_docs);
      }
    }
    md += "\n";
  }
  md += "\n| layer | method | relative weight error |\n|---|---|---|\n";
  for (const auto& l : r.layers) {
    md += absl::StrFormat("| %s | %s | %.5f |\n", l.name, l.method, l.relative_weight_error);
  }
  return md;
}

}  // namespace qaas::quant
