"""The Grafana dashboard and the Prometheus rules, proven on real metrics.

Starts qaas-server and a qaas-worker (separate processes, as in the cluster),
runs jobs through them with the Python client, starts Debian's Prometheus on
loopback scraping both with the qaas rules loaded, then runs every panel query
of deploy/k8s/monitoring/qaas-dashboard.json through Prometheus' HTTP API and
asserts each returns data with a finite value. Everything listens on 127.0.0.1.

Env: QAAS_SERVER_BIN, QAAS_WORKER_BIN; needs `prometheus` and python3-grpcio
(scripts/setup installs them).
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from qaas_processes import REPO, Process, free_port, start_qaas_server, synthetic_text  # noqa: E402

DASHBOARD = os.path.join(REPO, "deploy", "k8s", "monitoring", "qaas-dashboard.json")
EXTRACT_RULES = os.path.join(REPO, "deploy", "prometheus", "extract-rules")

try:
    import qaas_client
    from qaas_client import job_pb2
except ImportError as e:
    raise SystemExit("test_dashboard: cannot import the client (%s): run scripts/setup" % e)

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None:
    raise SystemExit("test_dashboard: no `prometheus` binary: run scripts/setup (Debian package prometheus)")

# What Grafana substitutes in queries; windows long enough to hold this test's jobs.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "15s"}


def panel_queries(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["refId"], target["expr"]


def substitute(expr):
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


class DashboardFileTest(unittest.TestCase):
    """The dashboard JSON itself: what Grafana needs to import it."""

    def test_structure(self):
        with open(DASHBOARD) as f:
            d = json.load(f)
        self.assertEqual(d["uid"], "qaas-jobs")
        variables = {v["name"]: v for v in d["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
        for p in d["panels"]:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            self.assertTrue(p["targets"], p["title"] + ": no query")
            refs = [t["refId"] for t in p["targets"]]
            self.assertEqual(len(refs), len(set(refs)), p["title"])
            for t in p["targets"]:
                self.assertEqual(t["datasource"]["uid"], "${datasource}", p["title"])
                for word in t["expr"].replace("(", " ").split():
                    if word.startswith("$") and not word.startswith("${"):
                        self.assertIn(word.rstrip("])"), GRAFANA_VARIABLES, p["title"])
        # The panels the issue asks for, by the metrics they read.
        exprs = " ".join(e for _, _, e in panel_queries(d))
        for metric in ["qaas_jobs_queued", "qaas_jobs_submitted_total", "qaas_jobs_finished_total",
                       "qaas_job_duration_seconds_bucket", "qaas_job_queue_wait_seconds_bucket",
                       "qaas_worker_jobs_running", "qaas_lease_expirations_total",
                       "qaas_worker_storage_bytes_total", "qaas_job_perplexity_increase_ratio_bucket",
                       "qaas_job_task_accuracy_change_bucket"]:
            self.assertIn(metric, exprs)


class DashboardOnRealMetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="qaas-dashboard-")
        cls.procs = []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        d = cls.dir
        model = os.path.join(d, "tiny-opt")
        shutil.copytree(os.path.join(REPO, "tests", "data", "tiny-opt"), model)
        text = os.path.join(d, "text.txt")
        with open(text, "w") as f:
            f.write(synthetic_text(6000, 3))

        server_metrics, worker_metrics, prom_port = free_port(), free_port(), free_port()
        server, port = start_qaas_server(d, ["--metrics_listen", "127.0.0.1:%d" % server_metrics, "--file_roots", d])
        cls.procs.append(server)
        address = "127.0.0.1:" + port
        cls.procs.append(Process("qaas-worker", [
            os.environ["QAAS_WORKER_BIN"], "--server", address, "--work_dir", os.path.join(d, "worker"),
            "--name", "worker-a", "--poll_wait_ms", "500", "--metrics_listen", "127.0.0.1:%d" % worker_metrics], d))

        rules = os.path.join(d, "qaas-rules.yml")
        subprocess.run([sys.executable, EXTRACT_RULES, rules], check=True)
        config = os.path.join(d, "prometheus.yml")
        with open(config, "w") as f:
            f.write("""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%s]
scrape_configs:
  - job_name: qaas-server
    static_configs: [{targets: ["127.0.0.1:%d"]}]
  - job_name: qaas-worker
    static_configs: [{targets: ["127.0.0.1:%d"]}]
""" % (json.dumps(rules), server_metrics, worker_metrics))
        cls.prometheus = "http://127.0.0.1:%d" % prom_port
        cls.procs.append(Process("prometheus", [
            PROMETHEUS, "--config.file=" + config, "--storage.tsdb.path=" + os.path.join(d, "tsdb"),
            "--web.listen-address=127.0.0.1:%d" % prom_port, "--log.level=warn"], d))
        cls._wait_for_targets()

        # A small winogrande file for the jobs' zero-shot task.
        tasks = os.path.join(d, "tasks")
        os.makedirs(tasks)
        with open(os.path.join(tasks, "winogrande.validation.jsonl"), "w") as f:
            for i in range(8):
                f.write(json.dumps({"sentence": "The cat sat on the mat because _ was %s." % ["tired", "soft"][i % 2],
                                    "option1": "the cat", "option2": "the mat", "answer": "12"[i % 2]}) + "\n")

        # Jobs: two of each kind (a series' first sample is its first value,
        # so a rate needs a second increment), two of them failing.
        cls.client = qaas_client.Client(address)
        cls.jobs = []
        for preset, extra in [("rtn", {}), ("gptq", {"calibration": text, "num_samples": 4, "calib_seq_len": 64}),
                              ("rtn", {}), ("gptq", {"calibration": text, "num_samples": 4, "calib_seq_len": 64})]:
            job = cls.client.submit(model=model, scheme="W4A16g32", preset=preset, evaluation=text,
                                    eval_seq_len=128, max_windows=8, tasks=["winogrande"], task_data=tasks, **extra)
            cls.jobs.append(job.wait(timeout=120))
            time.sleep(1.5)
        blank = os.path.join(d, "blank.txt")
        with open(blank, "w") as f:
            f.write("\n\n")
        for _ in range(2):  # a dataset with no text: passes submit, fails on the worker
            bad = cls.client.submit(model=model, scheme="W4A16g32", preset="rtn", evaluation=blank)
            cls.jobs.append(bad.wait(timeout=120, raise_on_failure=False))
            time.sleep(1.5)
        time.sleep(3)  # a few scrapes and rule evaluations after the last change

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "client", None):
            cls.client.close()
        for p in reversed(cls.procs):
            p.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def _api(cls, path, **params):
        url = cls.prometheus + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise AssertionError("%s: %s" % (url, body))
        return body["data"]

    @classmethod
    def _wait_for_targets(cls, timeout=60):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for p in cls.procs:
                if p.proc.poll() is not None:
                    raise RuntimeError("%s exited: %s" % (p.name, p.output()))
            try:
                targets = cls._api("/api/v1/targets")["activeTargets"]
                last = [(t["labels"]["job"], t["health"], t.get("lastError")) for t in targets]
                if len(targets) == 2 and all(t["health"] == "up" for t in targets):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Prometheus targets not up: %s" % last)

    def test_jobs_ran(self):
        states = [j.state for j in self.jobs]
        self.assertEqual(states, [job_pb2.JOB_STATE_SUCCEEDED] * 4 + [job_pb2.JOB_STATE_FAILED] * 2,
                         self.jobs[-1].error)

    def test_every_panel_query_returns_data(self):
        with open(DASHBOARD) as f:
            dashboard = json.load(f)
        empty = []
        checked = 0
        for title, ref, expr in panel_queries(dashboard):
            query = substitute(expr)
            result = self._api("/api/v1/query", query=query)["result"]
            values = [float(r["value"][1]) for r in result]
            checked += 1
            if not any(math.isfinite(v) for v in values):
                empty.append("%s [%s]: %s -> %s" % (title, ref, query, values))
        self.assertEqual(empty, [], "panel queries without data")
        self.assertEqual(checked, sum(len(p["targets"]) for p in dashboard["panels"]))

    def test_panels_show_what_happened(self):
        def value(query):
            return {tuple(sorted(r["metric"].items())): float(r["value"][1])
                    for r in self._api("/api/v1/query", query=query)["result"]}
        finished = value("sum by (method, status) (qaas_jobs_finished_total)")
        self.assertEqual(finished, {(("method", "gptq"), ("status", "succeeded")): 2.0,
                                    (("method", "rtn"), ("status", "failed")): 2.0,
                                    (("method", "rtn"), ("status", "succeeded")): 2.0})
        self.assertEqual(value("sum(qaas_jobs_queued)"), {(): 0.0})
        self.assertEqual(value("sum(qaas_workers_active)"), {(): 1.0})
        outcomes = value("sum by (outcome) (qaas_worker_jobs_total)")
        self.assertEqual(outcomes, {(("outcome", "succeeded"),): 4.0, (("outcome", "failed"),): 2.0})
        written = value('qaas_worker_storage_bytes_total{direction="write"}')
        self.assertGreater(list(written.values())[0], 0)
        ratio = list(value("qaas:job_failure_ratio:rate1h").values())[0]
        self.assertTrue(0 < ratio < 1, ratio)
        # The quality histogram holds the jobs' own perplexity increases.
        observed = sum(j.result.perplexity_quantized / j.result.perplexity_original - 1 for j in self.jobs[:4])
        total = list(value("sum(qaas_job_perplexity_increase_ratio_sum)").values())[0]
        self.assertAlmostEqual(total, observed, places=6)
        # And the accuracy histogram the jobs' task results, one per job.
        results = [t for j in self.jobs[:4] for t in j.result.tasks]
        self.assertEqual([t.task for t in results], ["winogrande"] * 4)
        self.assertEqual([t.docs for t in results], [8] * 4)
        count = value("sum by (method, task) (qaas_job_task_accuracy_change_count)")
        self.assertEqual(count, {(("method", "gptq"), ("task", "winogrande")): 2.0,
                                 (("method", "rtn"), ("task", "winogrande")): 2.0})
        changes = sum(t.acc_quantized - t.acc_original for t in results)
        self.assertAlmostEqual(list(value("sum(qaas_job_task_accuracy_change_sum)").values())[0], changes, places=9)

    def test_rules_load_and_evaluate(self):
        groups = self._api("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        self.assertEqual(len(rules), 9)
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        self.assertEqual(bad, [])
        firing = [r["name"] for r in rules if r.get("type") == "alerting" and r["state"] != "inactive"]
        self.assertEqual(firing, [], "a healthy service must not alert")


if __name__ == "__main__":
    unittest.main()
