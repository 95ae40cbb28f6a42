"""Helpers for the Python tests that run qaas binaries (tests/python, tests/deploy):
child processes with their output in a log file, a qaas-server started on a
loopback port, and synthetic text. Importing it puts python/ on sys.path."""

import os
import random
import socket
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "python"))


def synthetic_text(words, seed):
    vocab = "the cat sat on a mat and dog ran to park with big red ball she said hello sun was".split()
    rng = random.Random(seed)
    return " ".join(rng.choice(vocab) + (".\n" if i % 12 == 11 else "") for i in range(words))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process whose stdout and stderr go to <directory>/<name>.log."""

    def __init__(self, name, argv, directory):
        self.name = name
        self.log_path = os.path.join(directory, name + ".log")
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        """SIGTERM (a graceful shutdown), SIGKILL after 30 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def start_qaas_server(directory, flags, listen="127.0.0.1:0", timeout=30):
    """Starts $QAAS_SERVER_BIN with --data_dir <directory>/data and `flags`;
    returns (Process, gRPC port) once it is listening."""
    port_file = os.path.join(directory, "port")
    if os.path.exists(port_file):
        os.remove(port_file)
    server = Process("qaas-server", [os.environ["QAAS_SERVER_BIN"], "--data_dir", os.path.join(directory, "data"),
                                     "--listen", listen, "--port_file", port_file] + list(flags), directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError("qaas-server exited: " + server.output())
        if os.path.exists(port_file):
            with open(port_file) as f:
                port = f.read().strip()
            if port:
                return server, port
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("qaas-server did not start: " + server.output())
