// qaas-quantize: the quantization pipeline offline, on local directories, with
// no server. Prints the report's evaluation table and writes the artifact.
//
//   qaas-quantize --model DIR --output DIR --scheme W4A16g128 [--recipe rtn]
//                 [method options: --damp 0.01 --act_order --alpha 0.5 ...]
//                 [--calib FILE --num_samples 128 --calib_seq_len 0 --seed 0]
//                 [--eval FILE[,FILE...] --eval_seq_len 0 --max_windows 0] [--device auto]
//
// The method options' flags are the method table's (cli/method_flags.h, the
// same as qaasctl's); --help lists them with their defaults and bounds.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/method_flags.h"
#include "quant/artifact_format.h"
#include "quant/eval/task_table.h"
#include "quant/pipeline.h"
#include "quant/util/device.h"
#include "quant/util/allocator.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, output, "", "output directory (artifact/, report.json, checkpoints/)");
ABSL_FLAG(std::string, scheme, "W4A16g128", "scheme shorthand, e.g. W4A16g128, W8A16, W3A16g128_sym");
ABSL_FLAG(std::string, recipe, "rtn",
          "comma-separated methods: transforms, then at most one weight quantizer (the methods above)");
ABSL_FLAG(std::string, calib, "", "calibration text file (.txt or .jsonl)");
ABSL_FLAG(int, num_samples, 128, "calibration windows");
ABSL_FLAG(bool, block_errors, false,
          "with a recipe that needs no calibration (rtn): run the calibration pass anyway and report each block's "
          "output error on --calib (two forwards of the calibration windows per layer)");
ABSL_FLAG(int, calib_seq_len, 0, "calibration window length (0 = min(2048, context))");
ABSL_FLAG(uint64_t, seed, 0, "calibration sampling seed");
ABSL_FLAG(int, min_calibration_tokens, 16,
          "a linear whose calibration saw fewer tokens (a rarely routed MoE expert) is quantized with RTN");
ABSL_FLAG(std::string, expert_calibration, "routed",
          "MoE experts' calibration statistics: routed (their routed tokens) or all_tokens (every token, "
          "statistics only)");
ABSL_FLAG(std::string, eval, "", "comma-separated evaluation text files");
ABSL_FLAG(int, eval_seq_len, 0, "evaluation window length (0 = min(2048, context))");
ABSL_FLAG(int, max_windows, 0, "evaluation windows per dataset (0 = all)");
ABSL_FLAG(std::string, tasks, "",
          "comma-separated zero-shot tasks scored before and after as lm-evaluation-harness scores them: piqa, "
          "arc_easy, arc_challenge, hellaswag, winogrande, boolq, lambada_openai");
ABSL_FLAG(std::string, task_data, "", "directory of the task files (piqa.validation.jsonl, ...), for --tasks");
ABSL_FLAG(int, task_limit, 0, "the first N documents of each task (0 = all)");
ABSL_FLAG(int, task_max_length, 0, "longest model input for the tasks (0 = the model's context)");
ABSL_FLAG(std::string, device, "auto", "cpu, cuda, cuda:N, or auto (cuda where visible)");
ABSL_FLAG(int, threads, 0, "CPU threads for quantization and evaluation (ATen and OpenBLAS pools; 0 = the cores available to the process)");
ABSL_FLAG(int64_t, staged_forward_mb, 2048,
          "calibration activations GPTQ-like jobs may hold so that each layer's forward runs once, not once per sequential group (MiB; 0 = least memory, recompute)");
ABSL_FLAG(std::string, format, "auto",
          "artifact format: auto (GPTQ layout for weight-only integer schemes, compressed-tensors for the "
          "others it stores), gptq, compressed-tensors");
ABSL_FLAG(uint64_t, max_shard_bytes, 5000000000ull,
          "model.safetensors up to this size; shards with model.safetensors.index.json above");
ABSL_FLAG(bool, quiet, false, "no per-layer progress on stderr");

int main(int argc, char** argv) {
  qaas::quant::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::SetProgramUsageMessage(absl::StrCat("Quantizes a local Hugging Face model without a server.\n\n",
                                            qaas::cli::MethodFlagsHelp()));
  // --help lists this file's flags (Abseil's default looks for qaas-quantize.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return absl::EndsWith(file, "cli/qaas_quantize.cc"); };
  absl::SetFlagsUsageConfig(usage);
  auto method_flags = qaas::cli::TakeMethodFlags(&argc, argv);
  if (!method_flags.ok()) {
    std::cerr << "qaas-quantize: " << method_flags.status().message() << "\n";
    return 2;
  }
  absl::ParseCommandLine(argc, argv);
  qaas::quant::KeepTensorBuffersInTheHeap();
  qaas::quant::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  namespace q = qaas::quant;
  if (absl::GetFlag(FLAGS_model).empty() || absl::GetFlag(FLAGS_output).empty()) {
    std::cerr << "qaas-quantize: --model and --output are required (see --help)\n";
    return 2;
  }
  auto scheme = q::ParseScheme(absl::GetFlag(FLAGS_scheme));
  if (!scheme.ok()) {
    std::cerr << "qaas-quantize: " << scheme.status().message() << "\n";
    return 2;
  }
  q::PipelineOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.output_dir = absl::GetFlag(FLAGS_output);
  o.scheme = *scheme;
  auto recipe = qaas::cli::RecipeFromFlags(absl::GetFlag(FLAGS_recipe), *method_flags);
  if (!recipe.ok()) {
    std::cerr << "qaas-quantize: " << recipe.status().message() << "\n";
    return 2;
  }
  o.recipe = *std::move(recipe);
  if (!absl::GetFlag(FLAGS_calib).empty()) {
    o.calibration = q::DatasetRef{absl::GetFlag(FLAGS_calib), absl::GetFlag(FLAGS_calib),
                                  absl::GetFlag(FLAGS_calib_seq_len), 0};
  }
  o.num_samples = absl::GetFlag(FLAGS_num_samples);
  o.min_calibration_tokens = absl::GetFlag(FLAGS_min_calibration_tokens);
  o.block_errors = absl::GetFlag(FLAGS_block_errors);
  o.expert_calibration = absl::GetFlag(FLAGS_expert_calibration);
  o.seed = absl::GetFlag(FLAGS_seed);
  for (const auto& path : absl::StrSplit(absl::GetFlag(FLAGS_eval), ',', absl::SkipEmpty())) {
    o.evaluations.push_back({std::string(path), std::string(path), absl::GetFlag(FLAGS_eval_seq_len),
                             absl::GetFlag(FLAGS_max_windows)});
  }
  for (const auto& name : absl::StrSplit(absl::GetFlag(FLAGS_tasks), ',', absl::SkipEmpty())) {
    const q::TaskInfo* task = q::FindTask(name);
    if (!task) {
      std::cerr << "qaas-quantize: --tasks: " << q::UnknownTaskMessage(name) << "\n";
      return 2;
    }
    if (absl::GetFlag(FLAGS_task_data).empty()) {
      std::cerr << "qaas-quantize: --tasks needs --task_data, the directory of the task files\n";
      return 2;
    }
    const std::string path = q::TaskFileUri(absl::GetFlag(FLAGS_task_data), *task);
    o.tasks.push_back({task->name, path, path});
  }
  o.task_limit = absl::GetFlag(FLAGS_task_limit);
  o.task_max_length = absl::GetFlag(FLAGS_task_max_length);
  o.device = absl::GetFlag(FLAGS_device);
  o.staged_forward_bytes = static_cast<uint64_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_staged_forward_mb))) << 20;
  // Checked here for what the scheme and recipe decide, by the pipeline
  // against the model's widths.
  if (auto format = q::ResolveArtifactFormat(absl::GetFlag(FLAGS_format), o.scheme, o.recipe); !format.ok()) {
    std::cerr << "qaas-quantize: --format: " << format.status().message() << "\n";
    return 2;
  }
  o.artifact_layout = absl::GetFlag(FLAGS_format);
  o.max_shard_bytes = absl::GetFlag(FLAGS_max_shard_bytes);
  if (!absl::GetFlag(FLAGS_quiet)) {
    o.on_progress = [](const q::PipelineProgress& p) {
      if (p.epochs > 0) {
        std::fprintf(stderr, "\r[%d/%d] %s epoch %d/%d loss %.4g   ", p.layer, p.num_layers, p.step.c_str(), p.epoch,
                     p.epochs, p.loss);
        return;
      }
      if (p.num_experts > 0) {
        std::fprintf(stderr, "\r[%d/%d] %s expert %d/%d   ", p.layer, p.num_layers, p.step.c_str(), p.expert,
                     p.num_experts);
        return;
      }
      std::fprintf(stderr, "\r[%d/%d] %-24s", p.layer, p.num_layers, p.step.c_str());
      if (p.step == "exporting") std::fprintf(stderr, "\n");
    };
  }
  auto report = q::RunPipeline(o);
  if (!report.ok()) {
    std::cerr << "\nqaas-quantize: " << report.status() << "\n";
    return 1;
  }
  for (const q::EvaluationReport& e : report->evaluations) {
    std::printf("%s seq_len=%d windows=%lld ppl original=%.4f quantized=%.4f\n", e.dataset.c_str(), e.seq_len,
                static_cast<long long>(e.windows), e.perplexity_original, e.perplexity_quantized);
  }
  if (report->tasks) {
    for (const q::TaskReport& t : report->tasks->tasks) {
      for (const q::TaskMetricReport& m : t.metrics) {
        std::printf("%s docs=%lld %s original=%.4f quantized=%.4f (%+.4f)\n", t.task.c_str(),
                    static_cast<long long>(t.docs), m.metric.c_str(), m.original, m.quantized,
                    m.quantized - m.original);
      }
    }
    std::printf("tasks: %.1f s, %.0f tokens/s\n", report->tasks->seconds, report->tasks->tokens_per_second);
  }
  std::printf("report: %s/report.json\n", o.output_dir.c_str());
  return 0;
}
