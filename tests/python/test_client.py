"""The Python client (python/qaas_client) against a running embedded qaas-server.

Run by ctest with QAAS_SERVER_BIN set; needs python3-grpcio and python3-protobuf
(scripts/setup installs them).
"""

import json
import os
import shutil
import tempfile
import threading
import time
import unittest

from qaas_processes import REPO, start_qaas_server, synthetic_text

try:
    import grpc
    import qaas_client
    from qaas_client import job_pb2
except ImportError as e:  # a missing package must fail loudly, not skip
    raise SystemExit("test_client: cannot import the client (%s): run scripts/setup "
                     "(python3-grpcio, python3-protobuf)" % e)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="qaas-pyclient-")
        cls.model = os.path.join(cls.dir, "tiny-opt")
        shutil.copytree(os.path.join(REPO, "tests", "data", "tiny-opt"), cls.model)
        cls.text = os.path.join(cls.dir, "text.txt")
        with open(cls.text, "w") as f:
            f.write(synthetic_text(6000, 1))
        cls.server, port = start_qaas_server(cls.dir, ["--embedded", "--metrics_listen", "",
                                                        "--file_roots", cls.dir, "--lease_seconds", "5"])
        cls.client = qaas_client.Client("127.0.0.1:" + port)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_submit_wait_report(self):
        seen = []
        job = self.client.submit(model=self.model, scheme="W4A16g32", preset="gptq", calibration=self.text,
                                 num_samples=4, calib_seq_len=64, evaluation=[self.text], eval_seq_len=128,
                                 labels={"pipeline": "nightly"})
        self.assertTrue(job.id.startswith("j-"))
        done = job.wait(timeout=120, on_progress=lambda j: seen.append((j.state, j.progress.step)))
        self.assertEqual(done.state, job_pb2.JOB_STATE_SUCCEEDED, done.error)
        self.assertEqual(done.spec.model, "file://" + self.model)
        self.assertGreater(done.result.perplexity_original, 1.0)
        self.assertGreater(done.result.perplexity_quantized, 1.0)
        self.assertTrue(done.result.artifact_uri.endswith("/artifact"))
        self.assertEqual(seen[-1][0], job_pb2.JOB_STATE_SUCCEEDED)
        self.assertEqual(job.refresh().result.artifact_uri, done.result.artifact_uri)
        self.assertIn(job_pb2.JOB_STATE_RUNNING, [s for s, _ in seen])
        report = job.report()
        self.assertEqual(report["scheme"], "W4A16g32")
        self.assertAlmostEqual(report["evaluations"][0]["perplexity_quantized"], done.result.perplexity_quantized)
        listed = [j.id for j in self.client.list(labels={"pipeline": "nightly"})]
        self.assertEqual(listed, [job.id])
        # A second handle on the same job sees the same end.
        self.assertEqual(self.client.job(job.id).wait(timeout=5).result.artifact_uri, done.result.artifact_uri)

    def test_recipe_steps_with_options(self):
        step = job_pb2.RecipeStep(method="gptq")
        step.gptq.act_order = True
        job = self.client.submit(model=self.model, scheme="W3A16g32", recipe=[step], calibration=self.text,
                                 num_samples=4, calib_seq_len=64)
        done = job.wait(timeout=120)
        self.assertEqual([s.method for s in done.spec.recipe], ["gptq"])
        self.assertTrue(done.spec.recipe[0].gptq.act_order)
        self.assertEqual(job.report()["recipe"], ["gptq"])

    def test_expert_calibration_options_reach_the_job(self):
        job = self.client.submit(model=self.model, scheme="W4A16g32", preset="gptq", calibration=self.text,
                                 num_samples=4, calib_seq_len=64, expert_calibration="all_tokens",
                                 min_calibration_tokens=100000)
        done = job.wait(timeout=120)
        self.assertEqual(done.state, job_pb2.JOB_STATE_SUCCEEDED, done.error)
        self.assertEqual(done.spec.calibration.expert_calibration, "all_tokens")
        report = job.report()
        self.assertEqual(report["calibration"]["min_calibration_tokens"], 100000)
        self.assertTrue(all(l["method"] == "rtn" for l in report["layers"]))  # every linear below the minimum

    def test_zero_shot_tasks_reach_the_job(self):
        tasks = os.path.join(self.dir, "tasks")
        os.makedirs(tasks, exist_ok=True)
        with open(os.path.join(tasks, "boolq.validation.jsonl"), "w") as f:
            for i in range(5):
                f.write(json.dumps({"passage": "the sky is blue", "question": "is the sky blue",
                                    "answer": i % 2 == 0}) + "\n")
        job = self.client.submit(model=self.model, scheme="W4A16g32", preset="rtn", tasks="boolq",
                                 task_data=tasks, task_limit=4)
        done = job.wait(timeout=120)
        self.assertEqual(list(done.spec.tasks.names), ["boolq"])
        self.assertEqual(done.spec.tasks.data, "file://" + tasks)
        self.assertEqual([(t.task, t.docs) for t in done.result.tasks], [("boolq", 4)])
        result = job.report()["tasks"]["results"][0]
        self.assertEqual(result["docs"], 4)
        self.assertAlmostEqual(result["metrics"]["acc"]["quantized"], done.result.tasks[0].acc_quantized)
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.submit(model=self.model, scheme="W4A16g32", preset="rtn", tasks=["boolq", "mmlu"],
                               task_data=tasks)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("unknown task 'mmlu'", caught.exception.details())

    def test_bad_request_names_the_field(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.submit(model=self.model, scheme="W4A16g1000000000000", preset="rtn")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("scheme", caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get("j-nosuchjob")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_failed_job_raises_with_the_reason(self):
        blank = os.path.join(self.dir, "blank.txt")
        with open(blank, "w") as f:
            f.write("\n\n")  # no text: passes submit's checks, fails on the worker
        job = self.client.submit(model=self.model, scheme="W4A16g32", preset="rtn", evaluation=blank)
        with self.assertRaises(qaas_client.JobFailed) as caught:
            job.wait(timeout=120)
        self.assertEqual(caught.exception.job.state, job_pb2.JOB_STATE_FAILED)
        self.assertIn("dataset text is empty", str(caught.exception))
        self.assertEqual(job.wait(raise_on_failure=False).state, job_pb2.JOB_STATE_FAILED)

    def test_timeout_and_cancel(self):
        # Held in the queue behind nothing but a device no worker has.
        job = self.client.submit(model=self.model, scheme="W4A16g32", preset="rtn", device="cuda")
        start = time.monotonic()
        with self.assertRaises(TimeoutError):
            job.wait(timeout=0.5)
        self.assertLess(time.monotonic() - start, 10)
        self.assertEqual(job.cancel("not needed").state, job_pb2.JOB_STATE_CANCELLED)
        with self.assertRaises(qaas_client.JobFailed):
            job.wait(timeout=5)


class ReconnectTest(unittest.TestCase):
    """wait() outlives a server restart: it watches again and sees the end."""

    def start_server(self, listen):
        self.server, port = start_qaas_server(self.dir, ["--metrics_listen", "", "--file_roots", self.dir],
                                              listen=listen)
        return port

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="qaas-pyclient-restart-")
        shutil.copytree(os.path.join(REPO, "tests", "data", "tiny-opt"), os.path.join(self.dir, "model"))

    def tearDown(self):
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_wait_survives_a_server_restart(self):
        port = self.start_server("127.0.0.1:0")
        client = qaas_client.Client("127.0.0.1:" + port)
        # No worker runs here: the job stays queued until cancelled.
        job = client.submit(model=os.path.join(self.dir, "model"), scheme="W4A16g32", preset="rtn")
        outcome = {}
        def wait():
            try:
                job.wait(timeout=60)
            except qaas_client.JobFailed as e:
                outcome["job"] = e.job
            except Exception as e:  # anything else is a failure of wait()
                outcome["error"] = e
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.5)
        self.assertEqual(self.server.stop(), 0)  # graceful: ends the watch stream with UNAVAILABLE
        time.sleep(1.0)  # the waiter retries against nothing meanwhile
        self.start_server("127.0.0.1:" + port)
        self.assertEqual(client.job(job.id).cancel("restart test").state, job_pb2.JOB_STATE_CANCELLED)
        waiter.join(timeout=30)
        self.assertFalse(waiter.is_alive())
        self.assertNotIn("error", outcome, outcome.get("error"))
        self.assertEqual(outcome["job"].state, job_pb2.JOB_STATE_CANCELLED)
        self.assertEqual(outcome["job"].error, "cancelled: restart test")
        client.close()


if __name__ == "__main__":
    unittest.main()
