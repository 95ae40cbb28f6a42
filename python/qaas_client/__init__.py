"""A thin Python client for qaas, for pipeline steps (Kubeflow, Airflow, ...).

    from qaas_client import Client

    with Client("qaas.example.internal:50051") as qaas:
        job = qaas.submit(model="file:///models/llama", scheme="W4A16g128", preset="gptq",
                          calibration="file:///data/wikitext2.txt",
                          evaluation=["file:///data/wikitext2-test.txt"])
        done = job.wait(on_progress=lambda j: print(j.progress.step, j.progress.fraction))
        print(done.result.artifact_uri, done.result.perplexity_quantized)

`wait()` follows the job over WatchJob (watching again when the stream drops,
e.g. across a server restart) and raises JobFailed when the job ends FAILED
or CANCELLED. Every call waits for the connection up to its timeout rather
than failing while the server is briefly unreachable. Requests the
server refuses raise grpc.RpcError with the server's message, which names
the offending field. The generated stubs are under `qaas.v1` for anything
the wrapper does not cover.
"""

import json
import os
import time

import grpc

from qaas.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

__all__ = ["Client", "Job", "JobFailed", "job_pb2", "job_service_pb2"]

_FINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


class JobFailed(Exception):
    """The job ended FAILED or CANCELLED; `.job` is its last state."""

    def __init__(self, job):
        self.job = job
        super().__init__("job %s %s: %s" % (job.id, job_pb2.JobState.Name(job.state), job.error))


def _uri(path_or_uri):
    """Local paths become file:// uris; uris pass through."""
    if "://" in path_or_uri:
        return path_or_uri
    return "file://" + os.path.abspath(path_or_uri)


class Client:
    """A connection to a qaas-server's JobService."""

    def __init__(self, target, credentials=None, token=None, timeout=30.0):
        """target: "host:port". credentials: grpc.ChannelCredentials for TLS (None =
        plaintext). token: a bearer token sent as `authorization` metadata. timeout:
        seconds for unary calls."""
        if credentials is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        self._timeout = timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        # wait_for_ready: while the server restarts, calls wait (up to the
        # timeout) for the connection instead of failing at once.
        return method(request, timeout=timeout or self._timeout, metadata=self._metadata, wait_for_ready=True)

    def submit(self, model, scheme, preset=None, recipe=None, calibration=None, num_samples=0,
               calib_seq_len=0, seed=0, evaluation=(), eval_seq_len=0, max_windows=0, output="",
               priority=0, labels=None, idempotency_key="", device="", expert_calibration="",
               min_calibration_tokens=0, artifact_format="", max_shard_bytes=0, tasks=(), task_data="",
               task_limit=0, task_max_length=0):
        """Submits a job and returns its Job handle.

        model, calibration, evaluation: uris (or local paths, made file:// uris).
        scheme: a shorthand such as "W4A16g128", "W4A8KV4" or "Wmxfp4Amxfp4".
        preset: one of "rtn", "gptq", "adadim-rtn", "adadim-gptq", "smoothquant-rtn",
        "smoothquant-gptq", "rptq", "omniquant" (docs/api.md, Recipes); or recipe: a
        list of method names or job_pb2.RecipeStep messages (with their options).
        Neither: the server refuses the spec (INVALID_ARGUMENT, recipe required).
        device: "cpu", "cuda" or "" (any worker), resources.device.
        expert_calibration: "routed" (default) or "all_tokens", for mixture-of-experts models;
        min_calibration_tokens: a linear that saw fewer is quantized with RTN (0 = 16).
        artifact_format: "auto" or "" (default), "gptq" or "compressed-tensors";
        max_shard_bytes: shard the weights above this size (0 = 5 GB).
        tasks: zero-shot task names (piqa, arc_easy, arc_challenge, hellaswag, winogrande, boolq,
        lambada_openai; a list or a comma-separated string), scored before and after as
        lm-evaluation-harness scores them; task_data: the uri (or local directory) holding their
        files (piqa.validation.jsonl, ...); task_limit: the first N documents of each (0 = all);
        task_max_length: the longest model input (0 = the model's context).
        """
        spec = job_pb2.JobSpec(model=_uri(model), output=output, priority=priority,
                               idempotency_key=idempotency_key)
        spec.scheme.shorthand = scheme
        if preset:
            spec.preset = preset
        for step in recipe or ():
            if isinstance(step, str):
                spec.recipe.add(method=step)
            else:
                spec.recipe.add().CopyFrom(step)
        if calibration:
            spec.calibration.dataset = _uri(calibration)
            spec.calibration.num_samples = num_samples
            spec.calibration.seq_len = calib_seq_len
            spec.calibration.seed = seed
            spec.calibration.expert_calibration = expert_calibration
            spec.calibration.min_calibration_tokens = min_calibration_tokens
        if isinstance(evaluation, str):
            evaluation = [evaluation]
        for dataset in evaluation:
            spec.evaluation.add(dataset=_uri(dataset), seq_len=eval_seq_len, max_windows=max_windows)
        for key, value in (labels or {}).items():
            spec.labels[key] = value
        if device:
            spec.resources.device = device
        spec.artifact.format = artifact_format
        spec.artifact.max_shard_bytes = max_shard_bytes
        if isinstance(tasks, str):
            tasks = [t for t in tasks.split(",") if t]
        if tasks:
            spec.tasks.names.extend(tasks)
            spec.tasks.data = _uri(task_data) if task_data else ""
            spec.tasks.limit = task_limit
            spec.tasks.max_length = task_max_length
        return self.submit_spec(spec)

    def submit_spec(self, spec):
        """Submits a job_pb2.JobSpec as is; returns its Job handle."""
        job = self._call(self._stub.SubmitJob, job_service_pb2.SubmitJobRequest(spec=spec))
        return Job(self, job)

    def job(self, job_id):
        """A handle on an existing job."""
        return Job(self, self.get(job_id))

    def get(self, job_id):
        return self._call(self._stub.GetJob, job_service_pb2.GetJobRequest(id=job_id))

    def list(self, states=(), labels=None):
        """Every job (newest first), following pages; states: JOB_STATE_* values."""
        token = ""
        while True:
            resp = self._call(self._stub.ListJobs, job_service_pb2.ListJobsRequest(
                states=list(states), labels=labels or {}, page_size=500, page_token=token))
            yield from resp.jobs
            token = resp.next_page_token
            if not token:
                return


class Job:
    """A submitted job: its id and the last state seen (`.job`, a job_pb2.Job)."""

    def __init__(self, client, job):
        self._client = client
        self.job = job

    @property
    def id(self):
        return self.job.id

    def refresh(self):
        self.job = self._client.get(self.id)
        return self.job

    def cancel(self, reason=""):
        self.job = self._client._call(self._client._stub.CancelJob,
                                      job_service_pb2.CancelJobRequest(id=self.id, reason=reason))
        return self.job

    def report(self):
        """The job's report.json as a dict (the job must have SUCCEEDED)."""
        resp = self._client._call(self._client._stub.GetReport, job_service_pb2.GetReportRequest(id=self.id))
        return json.loads(resp.report_json)

    def wait(self, timeout=None, on_progress=None, raise_on_failure=True):
        """Blocks until the job ends; returns its final job_pb2.Job.

        on_progress(job) is called with every change WatchJob reports. Raises
        TimeoutError after `timeout` seconds (the job keeps running) and JobFailed
        when it ends FAILED or CANCELLED (unless raise_on_failure is False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        retry_delay = 0.2
        while self.job.state not in _FINAL:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("job %s still %s after %.0f s" % (
                    self.id, job_pb2.JobState.Name(self.job.state), timeout))
            try:
                stream = self._client._stub.WatchJob(job_service_pb2.WatchJobRequest(id=self.id),
                                                     timeout=remaining, metadata=self._client._metadata,
                                                     wait_for_ready=True)
                for event in stream:
                    self.job = event.job
                    retry_delay = 0.2
                    if on_progress:
                        on_progress(self.job)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # the loop raises TimeoutError
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                time.sleep(retry_delay)  # server restarting or connection lost: watch again
                retry_delay = min(retry_delay * 2, 5.0)
        if raise_on_failure and self.job.state != job_pb2.JOB_STATE_SUCCEEDED:
            raise JobFailed(self.job)
        return self.job
