#include "server/scheduler.h"

#include <chrono>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "storage/location.h"
#include "storage/object_store.h"
#include "storage/uri.h"
#include "quant/util/status_macros.h"

namespace qaas::server {

std::string RandomId(const std::string& prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          std::chrono::steady_clock::now().time_since_epoch().count());
  return absl::StrFormat("%s%016x", prefix, rng());
}

bool IsFinal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

Scheduler::Scheduler(std::unique_ptr<JobStore> store, SchedulerOptions options, Metrics* metrics)
    : store_(std::move(store)), options_(std::move(options)), metrics_(metrics) {
  if (!options_.now_ms) {
    options_.now_ms = [] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
  RefreshGauges();
}

void Scheduler::Notify() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++version_;
  }
  changed_.notify_all();
}

void Scheduler::OfferWork() {
  std::lock_guard<std::mutex> lock(mu_);
  ++offers_;
  WakeNextPollerLocked();
}

void Scheduler::WakeNextPollerLocked() {
  for (Poller* p : pollers_) {
    if (!p->woken && p->looked_at < offers_) {
      p->woken = true;
      p->cv.notify_one();
      return;
    }
  }
}

uint64_t Scheduler::WaitForChange(uint64_t seen, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                    [&] { return version_.load() != seen || shutdown_.load(); });
  return version_.load();
}

void Scheduler::Shutdown() {
  shutdown_ = true;
  Notify();
  std::lock_guard<std::mutex> lock(mu_);
  for (Poller* p : pollers_) p->cv.notify_one();
}

void Scheduler::RefreshGauges() {
  {
    std::lock_guard<std::mutex> lock(gauge_mu_);
    gauge_stale_ = true;
    if (gauge_counting_) return;  // that caller counts (again) for this change
    gauge_counting_ = true;
  }
  for (int pass = 0;; ++pass) {
    {
      std::lock_guard<std::mutex> lock(gauge_mu_);
      if (!gauge_stale_ || pass == 2) {
        gauge_counting_ = false;
        return;
      }
      gauge_stale_ = false;
    }
    auto counts = store_->CountStates();
    if (!counts.ok()) {
      std::lock_guard<std::mutex> lock(gauge_mu_);
      gauge_stale_ = true;  // the next call tries again
      gauge_counting_ = false;
      return;
    }
    metrics_->SetQueueDepth(static_cast<double>(counts->queued));
    metrics_->SetRunning(static_cast<double>(counts->running));
  }
}

void Scheduler::RecordFinish(const v1::Job& job) {
  const std::string method = MethodLabel(job.spec());
  const double run_seconds =
      job.start_time_ms() > 0 ? (job.finish_time_ms() - job.start_time_ms()) / 1000.0 : -1.0;
  metrics_->JobFinished(job.state(), method, run_seconds);
  if (job.state() == v1::JOB_STATE_SUCCEEDED) {
    metrics_->QualityMeasured(method, job.result().perplexity_original(), job.result().perplexity_quantized());
    for (const auto& t : job.result().tasks()) {
      metrics_->TaskAccuracyMeasured(method, t.task(), t.acc_original(), t.acc_quantized());
    }
  }
}

void Scheduler::SawWorker(const std::string& worker_id, int polling_delta) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return;
    it->second.last_seen_ms = Now();
    it->second.polling += polling_delta;
  }
  RefreshWorkerGauge();
}

void Scheduler::RefreshWorkerGauge() {
  int active = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = Now();
    for (const auto& [id, w] : workers_) {
      active += w.polling > 0 || now - w.last_seen_ms <= options_.lease_duration_ms;
    }
  }
  metrics_->SetActiveWorkers(active);
}

std::vector<v1::WorkerCapabilities> Scheduler::LiveWorkers() {
  std::vector<v1::WorkerCapabilities> live;
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = Now();
  for (const auto& [id, w] : workers_) {
    if (w.polling > 0 || now - w.last_seen_ms <= options_.lease_duration_ms) live.push_back(w.capabilities);
  }
  return live;
}

void Scheduler::FailInfeasible(const std::string& job_id, const std::string& reason) {
  auto row = store_->Update(job_id, [&](JobRow& r) -> absl::Status {
    if (r.job.state() != v1::JOB_STATE_QUEUED) return absl::AbortedError("no longer queued");
    r.job.set_state(v1::JOB_STATE_FAILED);
    r.job.set_error(reason);
    r.job.set_update_time_ms(Now());
    r.job.set_finish_time_ms(Now());
    r.job.mutable_progress()->set_step("infeasible");
    return absl::OkStatus();
  });
  if (!row.ok()) return;  // taken or ended meanwhile
  RecordFinish(row->job);
  RefreshGauges();
  Notify();
}

namespace {

// A uri as a '/'-separated absolute name that overlap can be decided on:
// file:// paths with their existing part resolved, s3 as s3://bucket/prefix.
std::string OverlapName(const std::string& uri) {
  auto parsed = storage::ParseUri(uri);
  if (!parsed.ok()) return uri;
  if (parsed->scheme == "file") {
    std::error_code ec;
    const auto resolved = std::filesystem::weakly_canonical(parsed->path, ec);
    return "/file" + (ec ? parsed->path : resolved.lexically_normal().string());
  }
  return absl::StrCat("/", parsed->scheme, "/", parsed->authority, parsed->path.empty() ? "" : "/", parsed->path);
}

// `name`: an OverlapName, resolved once by the caller.
bool Overlaps(const std::string& name, const std::string& uri) {
  const std::string other = OverlapName(uri);
  return storage::PathIsWithin(name, other) || storage::PathIsWithin(other, name);
}

}  // namespace

absl::StatusOr<bool> Scheduler::HasIdempotencyKey(const std::string& tenant, const std::string& key) {
  if (key.empty()) return false;
  ListQuery q;
  q.tenant = tenant;
  q.page_size = 500;
  do {
    QAAS_ASSIGN_OR_RETURN(ListPage page, store_->List(q));
    for (const auto& j : page.jobs) {
      if (j.spec().idempotency_key() == key) return true;
    }
    q.page_token = page.next_page_token;
  } while (!q.page_token.empty());
  return false;
}

absl::Status Scheduler::CheckOutput(const std::string& tenant, const v1::JobSpec& spec) {
  const std::string& out = spec.output();
  const std::string out_name = OverlapName(out);
  auto refuse = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("output: '", out, "' ", why));
  };
  if (Overlaps(out_name, spec.model())) return refuse(absl::StrCat("overlaps the model '", spec.model(), "'"));
  if (!spec.calibration().dataset().empty() && Overlaps(out_name, spec.calibration().dataset())) {
    return refuse(absl::StrCat("overlaps the calibration dataset '", spec.calibration().dataset(), "'"));
  }
  for (const auto& e : spec.evaluation()) {
    if (Overlaps(out_name, e.dataset())) return refuse(absl::StrCat("overlaps the evaluation dataset '", e.dataset(), "'"));
  }
  if (!spec.tasks().names().empty() && Overlaps(out_name, spec.tasks().data())) {
    return refuse(absl::StrCat("overlaps the task data '", spec.tasks().data(), "'"));
  }
  if (!options_.default_output_uri.empty() && Overlaps(out_name, options_.default_output_uri)) {
    return refuse(absl::StrCat("lies in the server's own store (", options_.default_output_uri,
                               "); leave output empty for the job's own prefix there"));
  }
  // A retry of a submission (same tenant, same idempotency key) meets its own
  // first job's output: Submit then returns that job.
  auto retry = [&]() { return HasIdempotencyKey(tenant, spec.idempotency_key()); };
  ListQuery active;
  active.states = {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING};
  active.page_size = 500;
  do {
    QAAS_ASSIGN_OR_RETURN(ListPage page, store_->List(active));
    for (const auto& j : page.jobs) {
      if (!Overlaps(out_name, j.spec().output())) continue;
      QAAS_ASSIGN_OR_RETURN(const bool is_retry, retry());
      if (is_retry) return absl::OkStatus();
      return refuse(absl::StrCat("overlaps the output of ",
                                 j.tenant() == tenant ? absl::StrCat("job ", j.id()) : "another tenant's job", ", ",
                                 v1::JobState_Name(j.state()).substr(10)));
    }
    active.page_token = page.next_page_token;
  } while (!active.page_token.empty());
  if (spec.overwrite()) return absl::OkStatus();
  // Listed beneath the roots, as the worker will write it.
  auto location = storage::OpenLocation(out, options_.validation.file_roots);
  if (!location.ok()) return absl::OkStatus();  // the worker reports what is wrong with it
  const std::string list_prefix = location->ListPrefix();
  auto objects = location->store->List(list_prefix);
  if (!objects.ok() || objects->empty()) return absl::OkStatus();
  QAAS_ASSIGN_OR_RETURN(const bool is_retry, retry());
  if (is_retry) return absl::OkStatus();
  return refuse(absl::StrCat("already holds ", objects->size(), " objects (",
                             (*objects)[0].key.substr(list_prefix.size()),
                             ", ...); set overwrite to replace them, or name an empty location"));
}

absl::StatusOr<v1::Job> Scheduler::Submit(const std::string& tenant, v1::JobSpec spec) {
  QAAS_RETURN_IF_ERROR(ValidateJobSpec(options_.validation, &spec));
  const bool default_output = spec.output().empty();
  std::unique_lock<std::mutex> output_lock(submit_mu_, std::defer_lock);
  if (!default_output) {
    output_lock.lock();  // held until the job is stored
    QAAS_RETURN_IF_ERROR(CheckOutput(tenant, spec));
  }
  v1::Job job;
  job.set_id(RandomId("j-"));
  job.set_tenant(tenant);
  if (default_output) spec.set_output(absl::StrCat(options_.default_output_uri, "/jobs/", job.id()));
  *job.mutable_spec() = std::move(spec);
  job.set_state(v1::JOB_STATE_QUEUED);
  job.set_max_attempts(options_.max_attempts);
  job.set_create_time_ms(Now());
  job.set_update_time_ms(job.create_time_ms());
  job.mutable_progress()->set_step("queued");
  job.mutable_progress()->set_eta_ms(-1);
  job.set_memory_estimate_bytes(EstimateJobMemory(job.spec(), options_.validation.file_roots));
  bool created = false;
  QAAS_ASSIGN_OR_RETURN(auto stored, store_->Insert(job, &created));
  if (!created) {
    // The key is bound to the spec it was first used with.
    v1::JobSpec mine = job.spec();
    if (default_output && stored.spec().output() == absl::StrCat(options_.default_output_uri, "/jobs/", stored.id())) {
      mine.set_output(stored.spec().output());
    }
    if (!google::protobuf::util::MessageDifferencer::Equals(mine, stored.spec())) {
      return absl::AlreadyExistsError(absl::StrCat("idempotency_key '", job.spec().idempotency_key(),
                                                   "' was used for job ", stored.id(),
                                                   " with a different spec; use a new key for a new job"));
    }
  }
  if (created) {
    metrics_->JobSubmitted(MethodLabel(stored.spec()));
    RefreshGauges();
    Notify();
    OfferWork();
  }
  return stored;
}

absl::StatusOr<v1::Job> Scheduler::Get(const std::string& tenant, const std::string& id) {
  QAAS_ASSIGN_OR_RETURN(auto row, store_->Get(id));
  if (!tenant.empty() && row.job.tenant() != tenant) {
    return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
  }
  return row.job;
}

absl::StatusOr<v1::ListJobsResponse> Scheduler::List(const std::string& tenant,
                                                     const v1::ListJobsRequest& request) {
  if (request.page_size() < 0) return absl::InvalidArgumentError("page_size: must not be negative");
  ListQuery q;
  q.tenant = tenant;
  for (int s : request.states()) q.states.push_back(static_cast<v1::JobState>(s));
  for (const auto& [k, v] : request.labels()) q.labels.emplace_back(k, v);
  q.page_size = request.page_size() == 0 ? 50 : std::min(request.page_size(), 500);
  q.page_token = request.page_token();
  QAAS_ASSIGN_OR_RETURN(auto page, store_->List(q));
  v1::ListJobsResponse resp;
  for (auto& j : page.jobs) *resp.add_jobs() = std::move(j);
  resp.set_next_page_token(page.next_page_token);
  return resp;
}

absl::StatusOr<v1::Job> Scheduler::Cancel(const std::string& tenant, const std::string& id,
                                          const std::string& reason) {
  bool finished = false;
  auto row = store_->Update(id, [&](JobRow& r) -> absl::Status {
    v1::Job& j = r.job;
    if (!tenant.empty() && j.tenant() != tenant) return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
    if (IsFinal(j.state())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job '", id, "' already ended (", v1::JobState_Name(j.state()), ")"));
    }
    const std::string why = reason.empty() ? "cancelled by request" : absl::StrCat("cancelled: ", reason);
    j.set_update_time_ms(Now());
    if (j.state() == v1::JOB_STATE_QUEUED) {
      j.set_state(v1::JOB_STATE_CANCELLED);
      j.set_error(why);
      j.set_finish_time_ms(Now());
      finished = true;
    } else {
      j.set_cancel_requested(true);
      j.set_error(why);
    }
    return absl::OkStatus();
  });
  if (!row.ok()) return row.status();
  if (finished) RecordFinish(row->job);
  RefreshGauges();
  Notify();
  return row->job;
}

absl::StatusOr<v1::RegisterWorkerResponse> Scheduler::RegisterWorker(const v1::RegisterWorkerRequest& req) {
  if (req.name().empty()) return absl::InvalidArgumentError("name: required");
  v1::RegisterWorkerResponse resp;
  resp.set_worker_id(RandomId(req.name() + "-"));
  resp.set_lease_duration_ms(options_.lease_duration_ms);
  resp.set_heartbeat_interval_ms(options_.heartbeat_interval_ms);
  {
    std::lock_guard<std::mutex> lock(mu_);
    workers_[resp.worker_id()] = {req.capabilities(), req.name(), Now(), 0};
  }
  metrics_->WorkerRegistered();
  RefreshWorkerGauge();
  return resp;
}

absl::StatusOr<v1::LeaseJobResponse> Scheduler::LeaseJob(const v1::LeaseJobRequest& req) {
  WorkerInfo worker;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(req.worker_id());
    if (it == workers_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("worker '", req.worker_id(), "' is not registered (server restarted?): register again"));
    }
    worker = it->second;
  }
  SawWorker(req.worker_id(), +1);
  struct LeavePoll {
    Scheduler* s;
    const std::string& id;
    ~LeavePoll() { s->SawWorker(id, -1); }
  } leave_poll{this, req.worker_id()};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max<int64_t>(0, req.wait_ms()));
  v1::LeaseJobResponse resp;
  while (true) {
    uint64_t looked_at;
    {
      std::lock_guard<std::mutex> lock(mu_);
      looked_at = offers_;
    }
    const std::string lease_id = RandomId("l-");
    PlacementInput in;
    in.worker = worker.capabilities;
    in.live_workers = LiveWorkers();
    in.now_ms = Now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      in.last_served = last_served_;
    }
    std::vector<std::pair<std::string, std::string>> infeasible;  // id, reason
    auto choose = [&](const std::vector<const v1::Job*>& queued, const std::map<std::string, int>& running) {
      in.queued = queued;
      in.running_by_tenant = running;
      PlacementResult placed = Place(options_.placement, in);
      for (const auto& [i, why] : placed.infeasible) infeasible.emplace_back(queued[i]->id(), why);
      return placed.assigned;
    };
    auto claimed = store_->ClaimNext(choose, [&](JobRow& r) {
      v1::Job& j = r.job;
      j.set_state(v1::JOB_STATE_RUNNING);
      j.set_attempt(j.attempt() + 1);
      j.set_worker_id(req.worker_id());
      j.set_update_time_ms(Now());
      if (j.start_time_ms() == 0) j.set_start_time_ms(Now());
      j.mutable_progress()->set_step("leased");
      r.lease_id = lease_id;
      r.lease_expire_ms = Now() + options_.lease_duration_ms;
    });
    if (!claimed.ok()) return claimed.status();
    for (const auto& [id, why] : infeasible) FailInfeasible(id, why);
    if (claimed->has_value()) {
      const JobRow& row = **claimed;
      {
        std::lock_guard<std::mutex> lock(mu_);
        // A sequence, not the clock: two leases in one millisecond still order.
        last_served_[row.job.tenant()] = ++assignments_;
      }
      metrics_->JobStarted((Now() - row.job.create_time_ms()) / 1000.0);
      RefreshGauges();
      Notify();
      *resp.mutable_job() = row.job;
      resp.set_lease_id(row.lease_id);
      resp.set_lease_expire_time_ms(row.lease_expire_ms);
      // The roots the job's file:// uris were validated against: the worker
      // opens them beneath these, whatever the directories became since.
      for (const auto& root : options_.validation.file_roots) resp.add_file_roots(root);
      return resp;
    }
    std::unique_lock<std::mutex> lock(mu_);
    // Nothing this worker can take: a poller that has not looked since the
    // latest offer may find something (its device, its tenant's slot).
    WakeNextPollerLocked();
    if (std::chrono::steady_clock::now() >= deadline || shutting_down()) return resp;
    if (offers_ != looked_at) continue;  // offered while this call looked: look again
    Poller me;
    me.looked_at = looked_at;
    pollers_.push_back(&me);
    auto self = std::prev(pollers_.end());
    me.cv.wait_until(lock, deadline, [&] { return me.woken || shutting_down(); });
    pollers_.erase(self);
  }
}

absl::StatusOr<JobRow> Scheduler::UpdateLeased(const std::string& job_id, const std::string& lease_id,
                                               const std::function<void(JobRow&)>& mutate) {
  return store_->Update(job_id, [&](JobRow& r) -> absl::Status {
    if (r.job.state() != v1::JOB_STATE_RUNNING || r.lease_id != lease_id || lease_id.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("job '", job_id, "': lease '", lease_id, "' is no longer held (expired or job ended)"));
    }
    mutate(r);
    r.job.set_update_time_ms(Now());
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::HeartbeatResponse> Scheduler::Heartbeat(const v1::HeartbeatRequest& req) {
  auto row = UpdateLeased(req.job_id(), req.lease_id(), [&](JobRow& r) {
    *r.job.mutable_progress() = req.progress();
    r.lease_expire_ms = Now() + options_.lease_duration_ms;
  });
  if (!row.ok()) return row.status();
  SawWorker(req.worker_id(), 0);
  Notify();
  v1::HeartbeatResponse resp;
  resp.set_cancel_requested(row->job.cancel_requested());
  resp.set_lease_expire_time_ms(row->lease_expire_ms);
  return resp;
}

absl::Status Scheduler::CompleteJob(const v1::CompleteJobRequest& req) {
  return FinishLeased(req.job_id(), req.lease_id(), [&](JobRow& r) {
    r.job.set_state(v1::JOB_STATE_SUCCEEDED);
    *r.job.mutable_result() = req.result();
    r.job.mutable_progress()->set_step("done");
    r.job.mutable_progress()->set_fraction(1.0);
    r.job.mutable_progress()->set_eta_ms(0);
  });
}

absl::Status Scheduler::FailJob(const v1::FailJobRequest& req) {
  if (req.reason().empty()) return absl::InvalidArgumentError("reason: required");
  if (req.release()) return Release(req);
  return FinishLeased(req.job_id(), req.lease_id(), [&](JobRow& r) {
    const bool cancelled = req.cancelled() && r.job.cancel_requested();
    r.job.set_state(cancelled ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED);
    if (!cancelled) r.job.set_error(req.reason());
  });
}

absl::Status Scheduler::FinishLeased(const std::string& job_id, const std::string& lease_id,
                                     const std::function<void(JobRow&)>& set_outcome) {
  auto row = UpdateLeased(job_id, lease_id, [&](JobRow& r) {
    set_outcome(r);
    r.job.set_finish_time_ms(Now());
    r.lease_id.clear();
  });
  if (!row.ok()) return row.status();
  RecordFinish(row->job);
  RefreshGauges();
  Notify();
  OfferWork();  // its tenant's slot is free
  return absl::OkStatus();
}

absl::Status Scheduler::Release(const v1::FailJobRequest& req) {
  bool finished = false;
  auto row = UpdateLeased(req.job_id(), req.lease_id(), [&](JobRow& r) {
    v1::Job& j = r.job;
    r.lease_id.clear();
    r.lease_expire_ms = 0;
    if (j.cancel_requested()) {  // nobody wants the rest of it
      j.set_state(v1::JOB_STATE_CANCELLED);
      j.set_finish_time_ms(Now());
      finished = true;
      return;
    }
    j.set_state(v1::JOB_STATE_QUEUED);
    j.set_attempt(std::max(0, j.attempt() - 1));
    j.mutable_progress()->set_step(
        absl::StrCat("requeued: worker '", j.worker_id(), "' released it (", req.reason(), ")"));
    j.set_worker_id("");
  });
  if (!row.ok()) return row.status();
  metrics_->LeaseReleased();
  if (finished) RecordFinish(row->job);
  RefreshGauges();
  Notify();
  OfferWork();
  return absl::OkStatus();
}

absl::StatusOr<int> Scheduler::ExpireLeases() {
  RefreshWorkerGauge();
  QAAS_ASSIGN_OR_RETURN(auto ids, store_->ExpiredLeases(Now()));
  int n = 0;
  for (const auto& id : ids) {
    bool finished = false;
    auto row = store_->Update(id, [&](JobRow& r) -> absl::Status {
      v1::Job& j = r.job;
      if (j.state() != v1::JOB_STATE_RUNNING || r.lease_expire_ms >= Now()) {
        return absl::AbortedError("lease renewed meanwhile");
      }
      const std::string lost = absl::StrCat("lease of worker '", j.worker_id(), "' expired (worker lost)");
      r.lease_id.clear();
      r.lease_expire_ms = 0;
      j.set_update_time_ms(Now());
      if (j.cancel_requested()) {
        j.set_state(v1::JOB_STATE_CANCELLED);
        j.set_finish_time_ms(Now());
        finished = true;
      } else if (j.attempt() >= j.max_attempts()) {
        j.set_state(v1::JOB_STATE_FAILED);
        j.set_error(absl::StrCat(lost, "; gave up after ", j.attempt(), " attempts"));
        j.set_finish_time_ms(Now());
        finished = true;
      } else {
        j.set_state(v1::JOB_STATE_QUEUED);
        j.set_worker_id("");
        j.mutable_progress()->set_step(absl::StrCat("requeued: ", lost));
      }
      return absl::OkStatus();
    });
    if (!row.ok()) {
      if (absl::IsAborted(row.status())) continue;
      return row.status();
    }
    ++n;
    metrics_->LeaseExpired();
    if (finished) RecordFinish(row->job);
  }
  if (n > 0) {
    RefreshGauges();
    Notify();
    for (int k = 0; k < n; ++k) OfferWork();
  } else {
    bool stale;
    {
      std::lock_guard<std::mutex> lock(gauge_mu_);
      stale = gauge_stale_;
    }
    if (stale) RefreshGauges();  // what a burst's shared counts missed
  }
  return n;
}

}  // namespace qaas::server
