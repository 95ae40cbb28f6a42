// qaas-quantize: the quantization pipeline offline, on local directories, with
// no server. Prints the report's evaluation table and writes the artifact.
//
//   qaas-quantize --model DIR --output DIR --scheme W4A16g128 [--recipe rtn]
//                 [--act_order --static_groups --damp 0.01 --blocksize 128]
//                 [--alpha 0.5] [--rptq_clusters 32,4,4,32,32]
//                 [--epochs 0 --lwc_lr 0.01 --let_lr 0.005]
//                 [--calib FILE --num-samples 128 --calib-seq-len 2048 --seed 0]
//                 [--eval FILE[,FILE...] --eval-seq-len 2048 --max-windows 0] [--device auto]
#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "quant/pipeline.h"
#include "quant/util/allocator.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, output, "", "output directory (artifact/, report.json, checkpoints/)");
ABSL_FLAG(std::string, scheme, "W4A16g128", "scheme shorthand, e.g. W4A16g128, W8A16, W3A16g128_sym");
ABSL_FLAG(std::string, recipe, "rtn",
          "comma-separated methods: transforms (smoothquant, rptq) then one of rtn, gptq, adadim, omniquant");
ABSL_FLAG(bool, act_order, false, "gptq: quantize columns by decreasing Hessian diagonal (desc_act)");
ABSL_FLAG(bool, static_groups, false, "gptq: group parameters from the unmodified weights");
ABSL_FLAG(double, damp, 0.01, "gptq: damping as a fraction of mean(diag(H))");
ABSL_FLAG(int, blocksize, 128, "gptq: lazy-batch block size");
ABSL_FLAG(std::string, adadim_base, "rtn", "adadim: the quantizer it augments (rtn or gptq)");
ABSL_FLAG(double, alpha, 0.5, "smoothquant: migration strength in [0, 1]");
ABSL_FLAG(std::string, rptq_clusters, "32,4,4,32,32", "rptq: clusters at reorder points R1..R5");
ABSL_FLAG(int, epochs, 0, "omniquant: epochs per layer (0 = the paper's 20, or 40 at 2 bits)");
ABSL_FLAG(double, lwc_lr, 1e-2, "omniquant: learning rate of the clipping (LWC)");
ABSL_FLAG(double, let_lr, 5e-3, "omniquant: learning rate of the equivalent transforms (LET)");
ABSL_FLAG(std::string, calib, "", "calibration text file (.txt or .jsonl)");
ABSL_FLAG(int, num_samples, 128, "calibration windows");
ABSL_FLAG(int, calib_seq_len, 0, "calibration window length (0 = min(2048, context))");
ABSL_FLAG(uint64_t, seed, 0, "calibration sampling seed");
ABSL_FLAG(std::string, eval, "", "comma-separated evaluation text files");
ABSL_FLAG(int, eval_seq_len, 0, "evaluation window length (0 = min(2048, context))");
ABSL_FLAG(int, max_windows, 0, "evaluation windows per dataset (0 = all)");
ABSL_FLAG(std::string, device, "auto", "cpu, cuda, cuda:N, or auto (cuda where visible)");
ABSL_FLAG(bool, quiet, false, "no per-layer progress on stderr");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Quantizes a local Hugging Face model without a server.");
  absl::ParseCommandLine(argc, argv);
  qaas::quant::KeepTensorBuffersInTheHeap();
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
  o.recipe.clear();
  for (auto method : absl::StrSplit(absl::GetFlag(FLAGS_recipe), ',', absl::SkipEmpty())) {
    q::RecipeStep step;
    step.method = std::string(method);
    step.gptq.act_order = absl::GetFlag(FLAGS_act_order);
    step.gptq.static_groups = absl::GetFlag(FLAGS_static_groups);
    step.gptq.percdamp = absl::GetFlag(FLAGS_damp);
    step.gptq.blocksize = absl::GetFlag(FLAGS_blocksize);
    step.adadim_base = absl::GetFlag(FLAGS_adadim_base);
    step.smoothquant.alpha = absl::GetFlag(FLAGS_alpha);
    step.rptq.clusters.clear();
    for (auto c : absl::StrSplit(absl::GetFlag(FLAGS_rptq_clusters), ',', absl::SkipEmpty())) {
      int n = 0;
      if (!absl::SimpleAtoi(c, &n)) {
        std::cerr << "qaas-quantize: --rptq_clusters: '" << c << "' is not an integer\n";
        return 2;
      }
      step.rptq.clusters.push_back(n);
    }
    step.omniquant.epochs = absl::GetFlag(FLAGS_epochs);
    step.omniquant.lwc_lr = absl::GetFlag(FLAGS_lwc_lr);
    step.omniquant.let_lr = absl::GetFlag(FLAGS_let_lr);
    o.recipe.push_back(step);
  }
  if (!absl::GetFlag(FLAGS_calib).empty()) {
    o.calibration = q::DatasetRef{absl::GetFlag(FLAGS_calib), absl::GetFlag(FLAGS_calib),
                                  absl::GetFlag(FLAGS_calib_seq_len), 0};
  }
  o.num_samples = absl::GetFlag(FLAGS_num_samples);
  o.seed = absl::GetFlag(FLAGS_seed);
  for (const auto& path : absl::StrSplit(absl::GetFlag(FLAGS_eval), ',', absl::SkipEmpty())) {
    o.evaluations.push_back({std::string(path), std::string(path), absl::GetFlag(FLAGS_eval_seq_len),
                             absl::GetFlag(FLAGS_max_windows)});
  }
  o.device = absl::GetFlag(FLAGS_device);
  if (!absl::GetFlag(FLAGS_quiet)) {
    o.on_progress = [](const q::PipelineProgress& p) {
      if (p.epochs > 0) {
        std::fprintf(stderr, "\r[%d/%d] %s epoch %d/%d loss %.4g   ", p.layer, p.num_layers, p.step.c_str(), p.epoch,
                     p.epochs, p.loss);
        return;
      }
      std::fprintf(stderr, "\r[%d/%d] %-12s", p.layer, p.num_layers, p.step.c_str());
      if (p.step == "exporting") std::fprintf(stderr, "\n");
    };
  }
  auto report = q::RunPipeline(o);
  if (!report.ok()) {
    std::cerr << "\nqaas-quantize: " << report.status() << "\n";
    return 1;
  }
  for (const auto& e : (*report)["evaluations"]) {
    std::printf("%s seq_len=%d windows=%d ppl original=%.4f quantized=%.4f\n",
                e["dataset"].get<std::string>().c_str(), e["seq_len"].get<int>(),
                e["windows"].get<int>(), e["perplexity_original"].get<double>(),
                e["perplexity_quantized"].get<double>());
  }
  std::printf("report: %s/report.json\n", o.output_dir.c_str());
  return 0;
}
