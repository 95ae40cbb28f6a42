#include "worker/worker.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "proto/recipe_convert.h"
#include "proto/scheme_convert.h"
#include "quant/eval/task_table.h"
#include "quant/pipeline.h"
#include "quant/util/device.h"
#include "quant/util/status_macros.h"
#include "storage/sha256.h"
#include "worker/stager.h"

namespace qaas::worker {
namespace {

using Clock = std::chrono::steady_clock;

std::unique_ptr<grpc::ClientContext> Context(int64_t timeout_ms) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  return ctx;
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// Shared between the pipeline thread and the heartbeat thread.
struct JobProgress {
  std::mutex mu;
  std::condition_variable changed;
  v1::Progress progress;
  bool dirty = true;
  bool done = false;
  std::atomic<bool> cancel{false};  // the server asked to cancel
  std::atomic<bool> lost{false};    // the lease is gone: stop and report nothing
};

// Stages the model and datasets of `spec` into the cache and points `o` at
// them; adds the bytes it moved to `*bytes`.
absl::Status StageInputs(const v1::JobSpec& spec, const FileRoots& roots, const std::string& cache_dir,
                         quant::PipelineOptions* o, uint64_t* bytes) {
  auto model = StageDirectory(spec.model(), roots, cache_dir, bytes);
  if (!model.ok()) return Annotate(model.status(), "model");
  o->model_dir = *model;
  if (!spec.calibration().dataset().empty()) {
    auto path = StageFile(spec.calibration().dataset(), roots, cache_dir, bytes);
    if (!path.ok()) return Annotate(path.status(), "calibration.dataset");
    o->calibration = quant::DatasetRef{*path, spec.calibration().dataset(), spec.calibration().seq_len(), 0};
    o->num_samples = spec.calibration().num_samples();
    o->seed = spec.calibration().seed();
  }
  // (The server normalizes both; a spec that bypassed it gets the defaults.)
  if (!spec.calibration().expert_calibration().empty()) {
    o->expert_calibration = spec.calibration().expert_calibration();
  }
  if (spec.calibration().min_calibration_tokens() > 0) {
    o->min_calibration_tokens = spec.calibration().min_calibration_tokens();
  }
  for (const auto& e : spec.evaluation()) {
    auto path = StageFile(e.dataset(), roots, cache_dir, bytes);
    if (!path.ok()) return Annotate(path.status(), "evaluation dataset");
    o->evaluations.push_back({*path, e.dataset(), e.seq_len(), e.max_windows()});
  }
  for (const std::string& name : spec.tasks().names()) {
    const quant::TaskInfo* task = quant::FindTask(name);
    if (!task) {
      return absl::InvalidArgumentError(absl::StrCat("tasks: ", quant::UnknownTaskMessage(name)));
    }
    const std::string uri = quant::TaskFileUri(spec.tasks().data(), *task);
    auto path = StageFile(uri, roots, cache_dir, bytes);
    if (!path.ok()) return Annotate(path.status(), absl::StrCat("tasks: ", name));
    o->tasks.push_back({name, *path, uri});
  }
  o->task_limit = spec.tasks().limit();
  o->task_max_length = spec.tasks().max_length();
  return absl::OkStatus();
}

}  // namespace

v1::Progress DescribeProgress(const quant::PipelineProgress& pp) {
  v1::Progress out;
  double layer = pp.layer;
  std::string step = pp.step;
  if (pp.epochs > 0) {
    layer += static_cast<double>(pp.epoch) / pp.epochs;
    step = absl::StrFormat("%s (epoch %d/%d, loss %.3g)", pp.step, pp.epoch, pp.epochs, pp.loss);
  } else if (pp.num_experts > 0) {
    layer += static_cast<double>(pp.expert - 1) / pp.num_experts;
    step = absl::StrFormat("%s (expert %d/%d)", pp.step, pp.expert, pp.num_experts);
    out.set_expert(pp.expert);
    out.set_num_experts(pp.num_experts);
  }
  out.set_fraction(pp.num_layers > 0 ? 0.05 + 0.85 * layer / pp.num_layers : 0.05);
  out.set_step(step);
  out.set_layer(pp.layer);
  out.set_num_layers(pp.num_layers);
  return out;
}

Worker::Metrics::Metrics(prometheus::Registry& r)
    : running(prometheus::BuildGauge()
                  .Name("qaas_worker_jobs_running")
                  .Help("Jobs this worker is running (0 or 1).")
                  .Register(r)
                  .Add({})),
      jobs(prometheus::BuildCounter()
               .Name("qaas_worker_jobs_total")
               .Help("Jobs this worker ended, by outcome (succeeded, failed, cancelled, released, lost).")
               .Register(r)),
      storage_bytes(prometheus::BuildCounter()
                        .Name("qaas_worker_storage_bytes_total")
                        .Help("Bytes moved between object storage and the worker (cache hits move none), by direction.")
                        .Register(r)),
      bytes_read(storage_bytes.Add({{"direction", "read"}})),
      bytes_written(storage_bytes.Add({{"direction", "write"}})) {}

Worker::Worker(std::shared_ptr<grpc::Channel> channel, WorkerOptions options)
    : stub_(v1::WorkerService::NewStub(channel)), options_(std::move(options)) {
  if (options_.registry) metrics_ = std::make_unique<Metrics>(*options_.registry);
}

void Worker::Drain() {
  draining_ = true;
  stop_cv_.notify_all();
}

void Worker::Stop() {
  stop_ = true;
  draining_ = true;
  stop_cv_.notify_all();
}

absl::Status Worker::Register() {
  v1::RegisterWorkerRequest req;
  req.set_name(options_.name);
  // The device as placement knows it ("cpu", "cuda"), checked here: a
  // worker that cannot run on its device must not take jobs for it.
  auto device = quant::ResolveDevice(options_.device);
  if (!device.ok()) return device.status();
  req.mutable_capabilities()->add_devices(device->is_cuda() ? "cuda" : "cpu");
  req.mutable_capabilities()->set_gpu_memory_bytes(quant::DeviceTotalMemoryBytes(*device));
  req.mutable_capabilities()->set_host_memory_bytes(static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                                                    static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  v1::RegisterWorkerResponse resp;
  auto ctx = Context(options_.rpc_timeout_ms);
  if (auto st = FromGrpc(stub_->RegisterWorker(ctx.get(), req, &resp)); !st.ok()) return st;
  worker_id_ = resp.worker_id();
  // Beat at the server's interval, and at least three times per lease.
  heartbeat_interval_ms_ = resp.heartbeat_interval_ms() > 0 ? resp.heartbeat_interval_ms() : 2000;
  if (resp.lease_duration_ms() > 0) {
    heartbeat_interval_ms_ = std::min<int64_t>(heartbeat_interval_ms_, resp.lease_duration_ms() / 3);
  }
  heartbeat_interval_ms_ = std::max<int64_t>(heartbeat_interval_ms_, 50);
  return absl::OkStatus();
}

void Worker::Run() {
  int64_t backoff_ms = 200;
  while (!draining_) {
    auto ran = RunOnce();
    if (ran.ok()) {
      backoff_ms = 200;
      continue;
    }
    std::cerr << "qaas-worker: " << ran.status() << " (retrying in " << backoff_ms << " ms)\n";
    std::unique_lock<std::mutex> lock(mu_);
    stop_cv_.wait_for(lock, std::chrono::milliseconds(backoff_ms), [&] { return draining_.load(); });
    backoff_ms = std::min<int64_t>(backoff_ms * 2, 10000);
  }
}

absl::StatusOr<bool> Worker::RunOnce() {
  if (worker_id_.empty()) {
    if (auto st = Register(); !st.ok()) return st;
  }
  v1::LeaseJobRequest req;
  req.set_worker_id(worker_id_);
  req.set_wait_ms(options_.poll_wait_ms);
  v1::LeaseJobResponse resp;
  auto ctx = Context(options_.poll_wait_ms + options_.rpc_timeout_ms);
  auto st = FromGrpc(stub_->LeaseJob(ctx.get(), req, &resp));
  if (absl::IsFailedPrecondition(st)) worker_id_.clear();  // server forgot us: register again
  if (!st.ok()) return st;
  if (!resp.has_job()) return false;
  if (draining_) {  // leased while the poll was waiting: not ours to start
    Release(resp.job(), resp.lease_id(), "worker is shutting down");
    return true;
  }
  if (metrics_) metrics_->running.Set(1);
  RunJob(resp.job(), resp.lease_id(), {resp.file_roots().begin(), resp.file_roots().end()});
  if (metrics_) metrics_->running.Set(0);
  return true;
}

void Worker::RunJob(const v1::Job& job, const std::string& lease_id, const FileRoots& file_roots) {
  const auto start = Clock::now();
  JobProgress p;
  auto set_progress = [&](double fraction, const std::string& step, int layer, int num_layers, int expert = 0,
                          int num_experts = 0) {
    std::lock_guard<std::mutex> lock(p.mu);
    v1::Progress& pr = p.progress;
    pr.set_fraction(fraction);
    pr.set_step(step);
    pr.set_layer(layer);
    pr.set_num_layers(num_layers);
    pr.set_expert(expert);
    pr.set_num_experts(num_experts);
    const int64_t elapsed =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    pr.set_elapsed_ms(elapsed);
    pr.set_eta_ms(fraction > 0.05 ? static_cast<int64_t>(elapsed / fraction * (1 - fraction)) : -1);
    p.dirty = true;
    p.changed.notify_all();
  };

  // Heartbeats: at the server's interval, and soon after each progress change.
  std::thread heartbeat([&] {
    const int64_t interval_ms = heartbeat_interval_ms_, min_gap_ms = std::min<int64_t>(200, interval_ms / 2);
    while (true) {
      v1::HeartbeatRequest req;
      {
        std::unique_lock<std::mutex> lock(p.mu);
        p.changed.wait_for(lock, std::chrono::milliseconds(interval_ms), [&] { return p.dirty || p.done; });
        if (p.done) return;
        p.dirty = false;
        *req.mutable_progress() = p.progress;
      }
      req.set_worker_id(worker_id_);
      req.set_job_id(job.id());
      req.set_lease_id(lease_id);
      v1::HeartbeatResponse resp;
      auto ctx = Context(options_.rpc_timeout_ms);
      grpc::Status s = stub_->Heartbeat(ctx.get(), req, &resp);
      if (s.ok()) {
        if (resp.cancel_requested()) p.cancel = true;
      } else if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                 s.error_code() == grpc::StatusCode::NOT_FOUND) {
        p.lost = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(min_gap_ms));
    }
  });

  const std::string job_dir = absl::StrCat(options_.work_dir, "/jobs/", job.id());
  const std::string cache_dir = options_.work_dir + "/cache";
  absl::Status status = [&]() -> absl::Status {
    std::error_code ec;
    std::filesystem::remove_all(job_dir, ec);
    std::filesystem::create_directories(job_dir + "/out", ec);
    std::filesystem::create_directories(cache_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", job_dir, ": ", ec.message()));
    const v1::JobSpec& spec = job.spec();
    set_progress(0.01, "staging", 0, 0);
    quant::PipelineOptions o;
    uint64_t bytes_read = 0;
    absl::Status staged = StageInputs(spec, file_roots, cache_dir, &o, &bytes_read);
    if (metrics_) metrics_->bytes_read.Increment(static_cast<double>(bytes_read));  // whatever the outcome
    if (!staged.ok()) return staged;
    o.output_dir = job_dir + "/out";
    auto scheme = SchemeFromProto(spec.scheme());
    if (!scheme.ok()) return scheme.status();
    o.scheme = *scheme;
    o.recipe.clear();
    for (int i = 0; i < spec.recipe_size(); ++i) {
      // The method table's step (unset options take its defaults); the
      // pipeline checks the bounds again.
      auto step = RecipeStepFromProto(spec.recipe(i), absl::StrCat("recipe[", i, "]"));
      if (!step.ok()) return step.status();
      o.recipe.push_back(*std::move(step));
    }
    o.device = options_.device;
    o.staged_forward_bytes = options_.staged_forward_bytes;
    // The server resolved "auto" at submit where it could read the model's
    // config; the pipeline resolves (or checks) it against the model.
    o.artifact_layout = spec.artifact().format().empty() ? "auto" : spec.artifact().format();
    if (spec.artifact().max_shard_bytes() > 0) o.max_shard_bytes = spec.artifact().max_shard_bytes();
    o.manifest_extra = {{"job_id", job.id()}, {"model", spec.model()}};
    // Resume: an earlier attempt's per-layer checkpoints under the job's
    // output prefix (the pipeline uses those made from these same inputs).
    // The staged inputs' cache keys stand for their content.
    o.inputs_fingerprint = std::filesystem::path(o.model_dir).filename().string() + " ";
    if (o.calibration) {
      absl::StrAppend(&o.inputs_fingerprint, std::filesystem::path(o.calibration->path).parent_path().filename().string(), " ");
    }
    for (const auto& e : o.evaluations) {
      absl::StrAppend(&o.inputs_fingerprint, std::filesystem::path(e.path).parent_path().filename().string(), " ");
    }
    for (const auto& t : o.tasks) {
      absl::StrAppend(&o.inputs_fingerprint, std::filesystem::path(t.path).parent_path().filename().string(), " ");
    }
    set_progress(0.02, "looking for checkpoints", 0, 0);
    uint64_t checkpoint_bytes = 0;
    auto found = DownloadPrefix(spec.output(), file_roots, "checkpoints/", o.output_dir, &checkpoint_bytes);
    if (metrics_) metrics_->bytes_read.Increment(static_cast<double>(checkpoint_bytes));
    if (!found.ok()) {
      return absl::Status(found.status().code(), absl::StrCat("checkpoints from ", spec.output(), ": ",
                                                              found.status().message()));
    }
    o.resume = *found > 0;
    o.on_layer_saved = [&](int, const std::vector<std::string>& files) -> absl::Status {
      uint64_t written = 0;
      absl::Status st = UploadFiles(o.output_dir, spec.output(), file_roots, files, &written);
      if (metrics_) metrics_->bytes_written.Increment(static_cast<double>(written));
      if (!st.ok()) return absl::Status(st.code(), absl::StrCat("checkpoint upload to ", spec.output(), ": ", st.message()));
      return absl::OkStatus();
    };
    o.on_progress = [&](const quant::PipelineProgress& pp) {
      const v1::Progress d = DescribeProgress(pp);
      set_progress(d.fraction(), d.step(), d.layer(), d.num_layers(), d.expert(), d.num_experts());
    };
    o.should_stop = [&] { return p.cancel.load() || p.lost.load() || stop_.load(); };
    auto report = quant::RunPipeline(o);
    if (!report.ok()) return report.status();
    // Deliver "all layers done" before uploading, whatever the heartbeat
    // thread's timing: a fast job must not end showing layer 0.
    const int layers = report->num_layers;
    set_progress(0.95, "uploading", layers, layers);
    {
      v1::HeartbeatRequest beat;
      beat.set_worker_id(worker_id_);
      beat.set_job_id(job.id());
      beat.set_lease_id(lease_id);
      {
        std::lock_guard<std::mutex> lock(p.mu);
        *beat.mutable_progress() = p.progress;
      }
      v1::HeartbeatResponse resp;
      auto ctx = Context(options_.rpc_timeout_ms);
      grpc::Status s = stub_->Heartbeat(ctx.get(), beat, &resp);
      if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
    uint64_t bytes_written = 0;
    auto uploaded =
        UploadDirectory(o.output_dir, spec.output(), file_roots, {"report.md", "report.json"}, &bytes_written,
                        "checkpoints/");
    if (metrics_) metrics_->bytes_written.Increment(static_cast<double>(bytes_written));
    if (!uploaded.ok()) {
      return absl::Status(uploaded.code(), absl::StrCat("upload to ", spec.output(), ": ", uploaded.message()));
    }
    if (spec.overwrite()) {
      // The job replaces the output: what an earlier job left there goes.
      auto removed = RemoveStale(o.output_dir, spec.output(), file_roots);
      if (!removed.ok()) return Annotate(removed.status(), absl::StrCat("removing stale objects of ", spec.output()));
    }
    v1::CompleteJobRequest done;
    done.set_job_id(job.id());
    done.set_lease_id(lease_id);
    v1::JobResult* r = done.mutable_result();
    r->set_artifact_uri(spec.output() + "/artifact");
    r->set_report_uri(spec.output() + "/report.json");
    QAAS_ASSIGN_OR_RETURN(const std::string report_sha256, storage::Sha256File(o.output_dir + "/report.json"));
    r->set_report_sha256(report_sha256);
    if (!report->evaluations.empty()) {
      r->set_perplexity_original(report->evaluations[0].perplexity_original);
      r->set_perplexity_quantized(report->evaluations[0].perplexity_quantized);
    }
    r->set_quantized_bytes(report->quantized_bytes);
    if (report->tasks) {
      for (const quant::TaskReport& t : report->tasks->tasks) {
        for (const quant::TaskMetricReport& m : t.metrics) {
          if (m.metric != "acc") continue;
          v1::TaskResult* tr = r->add_tasks();
          tr->set_task(t.task);
          tr->set_docs(t.docs);
          tr->set_acc_original(m.original);
          tr->set_acc_quantized(m.quantized);
        }
      }
    }
    v1::CompleteJobResponse resp;
    auto ctx = Context(options_.rpc_timeout_ms);
    return FromGrpc(stub_->CompleteJob(ctx.get(), done, &resp));
  }();

  {
    std::lock_guard<std::mutex> lock(p.mu);
    p.done = true;
    p.changed.notify_all();
  }
  heartbeat.join();
  std::error_code ec;
  std::filesystem::remove_all(job_dir, ec);
  if (status.ok()) return CountJob("succeeded");
  if (p.lost) return CountJob("lost");  // a lost lease is the scheduler's to requeue
  if (stop_ && !p.cancel && absl::IsCancelled(status)) {  // stopped for shutdown: hand it back now
    int layer = 0, layers = 0;
    {
      std::lock_guard<std::mutex> lock(p.mu);
      layer = p.progress.layer();
      layers = p.progress.num_layers();
    }
    return Release(job, lease_id, absl::StrFormat("worker '%s' stopping after layer %d of %d", options_.name,
                                                  layer, layers));
  }
  const bool cancelled = absl::IsCancelled(status) && p.cancel;
  CountJob(cancelled ? "cancelled" : "failed");
  v1::FailJobRequest fail;
  fail.set_job_id(job.id());
  fail.set_lease_id(lease_id);
  fail.set_cancelled(cancelled);
  fail.set_reason(std::string(status.message()).empty() ? status.ToString() : absl::StrCat(
      absl::StatusCodeToString(status.code()), ": ", status.message()));
  SendFailJob(fail);
}

void Worker::Release(const v1::Job& job, const std::string& lease_id, const std::string& why) {
  CountJob("released");
  v1::FailJobRequest release;
  release.set_job_id(job.id());
  release.set_lease_id(lease_id);
  release.set_release(true);
  release.set_reason(why);
  SendFailJob(release);
}

void Worker::SendFailJob(const v1::FailJobRequest& request) {
  v1::FailJobResponse resp;
  auto ctx = Context(options_.rpc_timeout_ms);
  grpc::Status s = stub_->FailJob(ctx.get(), request, &resp);
  // Not fatal: the lease then expires and the scheduler requeues or fails the job.
  if (!s.ok()) std::cerr << "qaas-worker: FailJob(" << request.job_id() << "): " << s.error_message() << "\n";
}

void Worker::CountJob(const std::string& outcome) {
  if (metrics_) metrics_->jobs.Add({{"outcome", outcome}}).Increment();
}

}  // namespace qaas::worker
