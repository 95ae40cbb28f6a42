"""Tenants, tokens and TLS with the real binaries: tokens made by `qaasctl token`,
qaas-server with --auth_tokens and TLS with a worker CA, a qaas-worker process
that authenticates with its client certificate (mTLS), a job run for one tenant
through the Python client, and the other tenant shut out of it.

Run by ctest with QAAS_SERVER_BIN, QAAS_WORKER_BIN and QAASCTL_BIN set; needs
the openssl command, python3-grpcio and python3-protobuf (scripts/setup).
"""

import os
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

from qaas_processes import REPO, Process, start_qaas_server, synthetic_text

try:
    import grpc
    import qaas_client
    from qaas_client import job_pb2
except ImportError as e:
    raise SystemExit("test_auth: cannot import the client (%s): run scripts/setup" % e)



def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def qaasctl(*args, token_file=None, env=None):
    argv = [os.environ["QAASCTL_BIN"]] + list(args)
    if token_file:
        argv += ["--token_file", token_file]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env or dict(os.environ, QAAS_TOKEN=""))


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("openssl") is None:
            raise SystemExit("test_auth: no openssl command: run scripts/setup")
        cls.dir = tempfile.mkdtemp(prefix="qaas-auth-")
        cls.pki = os.path.join(cls.dir, "pki")
        subprocess.run([os.path.join(REPO, "tests", "make_test_pki"), cls.pki], check=True)
        cls.model = os.path.join(cls.dir, "tiny-opt")
        shutil.copytree(os.path.join(REPO, "tests", "data", "tiny-opt"), cls.model)
        cls.text = os.path.join(cls.dir, "text.txt")
        with open(cls.text, "w") as f:
            f.write(synthetic_text(4000, 2))

        # Tokens for two tenants; the server's file holds only their hashes.
        cls.token_files, lines = {}, []
        for tenant in ("acme", "globex"):
            path = os.path.join(cls.dir, tenant + ".token")
            made = qaasctl("token", "tenant:" + tenant, "--token_out", path)
            assert made.returncode == 0, made.stderr
            cls.token_files[tenant] = path
            lines.append(made.stdout)
        cls.tokens_path = os.path.join(cls.dir, "tokens")
        with open(cls.tokens_path, "w") as f:
            f.write("".join(lines))

        cls.server, cls.port = start_qaas_server(cls.dir, [
            "--metrics_listen", "", "--file_roots", cls.dir, "--lease_seconds", "5",
            "--auth_tokens", cls.tokens_path,
            "--tls_cert", os.path.join(cls.pki, "server.pem"), "--tls_key", os.path.join(cls.pki, "server.key"),
            "--tls_worker_ca", os.path.join(cls.pki, "worker-ca.pem")])
        cls.target = "127.0.0.1:" + cls.port
        worker_flags = ["--server", cls.target, "--metrics_listen", "", "--poll_wait_ms", "1000",
                        "--tls_ca", os.path.join(cls.pki, "server-ca.pem")]
        cls.worker = Process("qaas-worker", [os.environ["QAAS_WORKER_BIN"], "--name", "mtls",
                                             "--work_dir", os.path.join(cls.dir, "w1"),
                                             "--tls_cert", os.path.join(cls.pki, "worker.pem"),
                                             "--tls_key", os.path.join(cls.pki, "worker.key")] + worker_flags,
                             cls.dir)
        # A worker that presents a tenant's token instead of a worker credential.
        cls.impostor = Process("impostor", [os.environ["QAAS_WORKER_BIN"], "--name", "impostor",
                                            "--work_dir", os.path.join(cls.dir, "w2"),
                                            "--token_file", cls.token_files["acme"]] + worker_flags, cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls.impostor.stop()
        cls.worker.stop()
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def client(self, tenant):
        token = read(self.token_files[tenant]).strip() if tenant else None
        return self.client_with(token)

    def client_with(self, token):
        creds = grpc.ssl_channel_credentials(root_certificates=read(os.path.join(self.pki, "server-ca.pem"), "rb"))
        return qaas_client.Client(self.target, credentials=creds, token=token, timeout=20)

    def ctl(self, tenant, *args):
        return qaasctl("--server", self.target, "--tls_ca", os.path.join(self.pki, "server-ca.pem"), *args,
                       token_file=self.token_files.get(tenant))

    def test_token_files_are_private_and_never_overwritten(self):
        mode = stat.S_IMODE(os.stat(self.token_files["acme"]).st_mode)
        self.assertEqual(mode, 0o600)
        again = qaasctl("token", "tenant:acme", "--token_out", self.token_files["acme"])
        self.assertEqual(again.returncode, 2)
        self.assertIn("cannot create", again.stderr)
        self.assertNotIn(read(self.token_files["acme"]).strip(), read(self.tokens_path))

    def test_a_tenants_job_runs_on_an_mtls_worker_and_stays_private(self):
        acme, globex = self.client("acme"), self.client("globex")
        job = acme.submit(model=self.model, scheme="W4A16g32", preset="rtn", calibration=self.text,
                          num_samples=2, calib_seq_len=64, evaluation=[self.text], eval_seq_len=128,
                          max_windows=2)
        done = job.wait(timeout=120)
        self.assertEqual(done.state, job_pb2.JOB_STATE_SUCCEEDED, done.error)
        self.assertEqual(done.tenant, "acme")
        self.assertTrue(done.worker_id.startswith("mtls-"), done.worker_id)
        self.assertEqual(job.report()["scheme"], "W4A16g32")

        # globex holding acme's job id (as if it had leaked): every call is NOT_FOUND.
        leaked = job_pb2.Job(id=job.id, state=job_pb2.JOB_STATE_RUNNING)
        for call in (lambda: globex.job(job.id), lambda: qaas_client.Job(globex, leaked).report(),
                     lambda: qaas_client.Job(globex, leaked).cancel(),
                     lambda: qaas_client.Job(globex, leaked).wait(timeout=5)):
            with self.assertRaises(grpc.RpcError) as e:
                call()
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertNotIn(job.id, [j.id for j in globex.list()])
        self.assertIn(job.id, [j.id for j in acme.list()])

        # The same through qaasctl.
        got = self.ctl("acme", "get", job.id)
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertIn(job.id, got.stdout)
        other = self.ctl("globex", "get", job.id)
        self.assertEqual(other.returncode, 2)
        self.assertIn("not found", other.stderr)
        nobody = self.ctl(None, "list")
        self.assertEqual(nobody.returncode, 2)
        self.assertIn("missing credentials", nobody.stderr)
        acme.close()
        globex.close()

    def test_missing_wrong_and_misused_credentials(self):
        for client in (self.client(None), self.client_with("qaas_" + "0" * 64)):
            with self.assertRaises(grpc.RpcError) as e:
                list(client.list())
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            client.close()
        # The impostor's tenant token does not open WorkerService; it keeps
        # retrying and saying why.
        deadline = time.monotonic() + 20
        while "may not call WorkerService" not in self.impostor.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn("PERMISSION_DENIED", self.impostor.output())
        self.assertIsNone(self.impostor.proc.poll())


if __name__ == "__main__":
    unittest.main()
