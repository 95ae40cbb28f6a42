#!/usr/bin/env python3
"""Runs the commands of README.md's "## CLI" section against the built binaries.

Every command line of the section's ```sh blocks is either
  - run offline (qaas-quantize, qaas-make-model) with the README's flags as
    written, its placeholders (DIR, OUT, some.txt) and ../shared paths mapped
    to real files, and its outputs checked; or
  - listed in NEEDS_SERVER with the reason (qaas-server, qaas-worker, the
    qaasctl RPC commands): then the binary parses the README's flags and
    values (`BINARY <the README's arguments> --helpfull` must print the help,
    not a flag error), each flag is in its --helpfull listing, and a qaasctl
    subcommand is in its usage line.
A command the test cannot map (a new binary or qaasctl subcommand, an unknown
placeholder) FAILS, so a new README command cannot go untested. Flags in the
section's prose (`--preset gptq`, ...) must be flags of the binary the
paragraph is about (qaasctl unless it names another first). --help of every
binary must print its usage message and flags; KNOWN_DEFECTS lists the
binaries' own defects (XFAIL, reported, not failing).

  readme_cli_test.py BUILD_DIR SOURCE_DIR [-v]

Needs ../shared beside SOURCE_DIR (or $QAAS_SHARED_DIR) for the commands that
name it; without it those are skipped with a message. Prints "N passed,
N failed, N skipped, N known defects"; exits 1 when any failed. Runs in
about 20 s on 2 cores.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

BINARIES = {
    "qaas-server": "server/qaas-server",
    "qaas-worker": "worker/qaas-worker",
    "qaasctl": "cli/qaasctl",
    "qaas-quantize": "cli/qaas-quantize",
    "qaas-make-model": "cli/qaas-make-model",
}

# Commands that cannot run offline, and why. A key is a binary, or
# (binary, subcommand).
NEEDS_SERVER = {
    "qaas-server": "serves until stopped: a server, not a command that ends",
    "qaas-worker": "long-polls a scheduler at --server until stopped",
    ("qaasctl", "submit"): "an RPC to a qaas-server (SubmitJob)",
    ("qaasctl", "get"): "an RPC to a qaas-server (GetJob)",
    ("qaasctl", "list"): "an RPC to a qaas-server (ListJobs)",
    ("qaasctl", "watch"): "an RPC to a qaas-server (WatchJob)",
    ("qaasctl", "cancel"): "an RPC to a qaas-server (CancelJob)",
    ("qaasctl", "report"): "an RPC to a qaas-server (GetReport)",
}

# Defects of the binaries themselves (not of the README), reported as XFAIL.
# Once one is fixed its check passes and the test FAILS until the entry is
# removed here, so the list stays true.
KNOWN_DEFECTS = {}

# Flags whose value is a file or directory the command reads (must exist once mapped).
INPUT_FLAGS = {"--model", "--eval", "--calib", "--tokenizer_text", "--tokenizer", "--outliers_from"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")  # DIR, OUT, JOB_ID (not W4A16: digits)
FLAG = re.compile(r"--([A-Za-z][A-Za-z0-9_]*)")


class Results:
    def __init__(self, verbose):
        self.verbose = verbose
        self.passed, self.failed, self.skipped, self.xfailed = [], [], [], []

    def ok(self, name, detail=""):
        if name in KNOWN_DEFECTS:
            self.fail(name, "passes now: remove it from KNOWN_DEFECTS in tests/docs/readme_cli_test.py")
            return
        self.passed.append(name)
        print("PASS  %s%s" % (name, ("  (" + detail + ")") if detail and self.verbose else ""))

    def fail(self, name, why):
        if name in KNOWN_DEFECTS and not why.startswith("passes now"):
            self.xfailed.append(name)
            print("XFAIL %s: known defect of the binary: %s" % (name, KNOWN_DEFECTS[name]))
            return
        self.failed.append(name)
        print("FAIL  %s\n      %s" % (name, why.replace("\n", "\n      ")))

    def skip(self, name, why):
        self.skipped.append(name)
        print("SKIP  %s: %s" % (name, why))


def cli_section(readme_text):
    """The text of the "## CLI" section (up to the next "## " heading)."""
    m = re.search(r"^## CLI\s*$(.*?)(?=^## )", readme_text, re.M | re.S)
    if not m:
        raise SystemExit("README.md has no '## CLI' section")
    return m.group(1)


def sh_commands(section):
    """Every command line of the section's ```sh blocks: (argv, as written).

    Continuation lines are joined; comments dropped; an optional part
    `[--flag value]` is kept without its brackets (the test runs it)."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S):
        text = re.sub(r"\\\n", " ", block)
        for line in text.splitlines():
            argv = [t for t in (tok.strip("[]") for tok in shlex.split(line, comments=True)) if t]
            if argv:
                commands.append((argv, " ".join(line.split("#")[0].split())))
    return commands


def prose_flags(section):
    """(binary, flag, paragraph start) for each --flag in the prose's code spans."""
    prose = re.sub(r"^```.*?^```", "", section, flags=re.M | re.S)
    out = []
    for para in re.split(r"\n\s*\n", prose):
        spans = re.findall(r"`([^`]+)`", para)
        binary = "qaasctl"  # the section's prose is about `qaasctl submit` unless it names another binary
        for span in spans:
            first = span.split()[0] if span.split() else ""
            if first in BINARIES:
                binary = first
                break
        for span in spans:
            for flag in FLAG.findall(span):
                out.append((binary, flag, " ".join(para.split())[:60]))
    return out


def split_flags(args):
    """[(flag, value or None)] and positionals; a flag's value is the next token
    unless that is a flag (`--flag=value` too)."""
    flags, positionals, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                name, value = a.split("=", 1)
                flags.append((name, value))
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                flags.append((a, args[i + 1]))
                i += 1
            else:
                flags.append((a, None))
        else:
            positionals.append(a)
        i += 1
    return flags, positionals


class Binaries:
    def __init__(self, build_dir):
        self.build_dir = build_dir
        self._flags = {}

    def path(self, name):
        return os.path.join(self.build_dir, BINARIES[name])

    def run(self, argv, cwd=None, timeout=120):
        return subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)

    def helpfull(self, name, extra=()):
        return self.run([self.path(name)] + list(extra) + ["--helpfull"], timeout=30)

    def flags(self, name):
        """The flag names --helpfull lists (with --noNAME for booleans)."""
        if name not in self._flags:
            out = self.helpfull(name).stdout
            names = set()
            for entry in re.split(r"^(?=    --)", out, flags=re.M):
                m = re.match(r"    --([A-Za-z0-9_]+) \(", entry)
                if m:
                    names.add(m.group(1))
                    if re.search(r"default: (true|false);\s*$", entry):
                        names.add("no" + m.group(1))
            names.update({"help", "helpfull", "helpshort", "helppackage", "version", "only_check_args"})
            self._flags[name] = names
        return self._flags[name]


def check_flags(results, bins, name, binary, flags):
    known = bins.flags(binary)
    unknown = [f for f, _ in flags if f[2:] not in known]
    if unknown:
        results.fail(name, "%s has no flag %s (not in its --helpfull)" % (binary, ", ".join(unknown)))
        return False
    return True


def check_parses(results, bins, name, binary, args):
    """The binary parses the README's arguments (names and values) before printing help."""
    r = bins.helpfull(binary, args)
    if "ERROR" in r.stderr or "Flags from" not in r.stdout:
        results.fail(name, "%s rejects the README's arguments %s:\n%s" % (binary, " ".join(args), r.stderr.strip()))
        return False
    return True


class Runner:
    """Maps a README command's placeholders to real paths and runs it."""

    def __init__(self, bins, shared, source_dir, work, results):
        self.bins, self.shared, self.source_dir, self.work, self.results = bins, shared, source_dir, work, results
        self.count = 0

    def fresh(self, stem):
        self.count += 1
        return os.path.join(self.work, "%s-%d" % (stem.lower(), self.count))

    def text_file(self):
        """some.txt: TinyStories text (or, without ../shared, this repository's README)."""
        if self.shared:
            return os.path.join(self.shared, "data/tinystories/valid-sample.txt")
        return os.path.join(self.source_dir, "README.md")

    def map_args(self, binary, args):
        """The arguments with placeholders replaced; raises LookupError naming an unmappable one
        and FileNotFoundError when ../shared is needed and absent."""
        mapped, flag = [], None
        for a in args:
            value = a
            if a.startswith("../shared/"):
                if not self.shared:
                    raise FileNotFoundError(a)
                value = os.path.join(self.shared, a[len("../shared/"):])
            elif flag == "--output" and a in ("DIR", "OUT"):
                value = self.fresh(a)
            elif flag == "--model" and a == "DIR":
                if not self.shared:
                    raise FileNotFoundError("../shared/models/stories260k (the model a DIR stands for)")
                value = os.path.join(self.shared, "models/stories260k")
            elif flag == "--tokenizer_text" and a == "some.txt":
                value = self.text_file()
            elif PLACEHOLDER.match(a) or "..." in a:
                raise LookupError("no mapping for placeholder %r (after %s)" % (a, flag or binary))
            if flag in INPUT_FLAGS:
                for path in value.split(","):
                    if not os.path.exists(path):
                        raise LookupError("%s %s: no such file or directory once mapped (%s)" % (flag, a, path))
            mapped.append(value)
            flag = a if a.startswith("--") and "=" not in a else None
        return mapped

    def run(self, name, binary, args):
        try:
            mapped = self.map_args(binary, args)
        except FileNotFoundError as e:
            self.results.skip(name, "needs %s: ../shared is absent" % e)
            return
        except LookupError as e:
            self.results.fail(name, "cannot map the README command: %s" % e)
            return
        argv = [self.bins.path(binary)] + mapped
        try:
            r = self.bins.run(argv, cwd=self.work, timeout=300)
        except subprocess.TimeoutExpired:
            self.results.fail(name, "timed out: %s" % " ".join(argv))
            return
        if r.returncode != 0:
            self.results.fail(name, "exit %d: %s\n%s%s" % (r.returncode, " ".join(argv), r.stdout[-2000:],
                                                            r.stderr[-2000:]))
            return
        flags = dict(split_flags(mapped)[0])
        why = CHECKS[binary](flags, r.stdout)
        if why:
            self.results.fail(name, "%s: %s" % (" ".join(argv), why))
        else:
            self.results.ok(name, " ".join(argv))


def check_quantize(flags, stdout):
    out = flags["--output"]
    for f in ("report.json", "report.md", "artifact/config.json", "artifact/model.safetensors"):
        if not os.path.exists(os.path.join(out, f)):
            return "no %s under --output" % f
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    if "--scheme" in flags and report.get("scheme") != flags["--scheme"]:
        return "report.json scheme %r, asked for %r" % (report.get("scheme"), flags["--scheme"])
    evals = report.get("evaluations", [])
    if "--eval" in flags:
        if len(evals) != len(flags["--eval"].split(",")):
            return "report.json has %d evaluations for --eval %s" % (len(evals), flags["--eval"])
        for e in evals:
            if "--eval_seq_len" in flags and e.get("seq_len") != int(flags["--eval_seq_len"]):
                return "evaluated at seq_len %s, asked for %s" % (e.get("seq_len"), flags["--eval_seq_len"])
            if not (e.get("windows", 0) > 0 and e.get("perplexity_quantized", 0) > 1):
                return "evaluation without windows or perplexity: %s" % e
        if "ppl original=" not in stdout:
            return "no perplexity line on stdout"
    return ""


def check_make_model(flags, stdout):
    out = flags["--output"]
    for f in ("config.json", "model.safetensors"):
        if not os.path.exists(os.path.join(out, f)):
            return "no %s under --output" % f
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    for flag, key in (("--layers", "num_hidden_layers"), ("--hidden", "hidden_size")):
        if flag in flags and config.get(key) != int(flags[flag]):
            return "config.json %s is %s, asked for %s %s" % (key, config.get(key), flag, flags[flag])
    if "--tokenizer_text" in flags and not os.path.exists(os.path.join(out, "tokenizer.json")) and \
            not os.path.exists(os.path.join(out, "tokenizer.model")):
        return "--tokenizer_text wrote no tokenizer"
    if "--outliers_from" in flags:
        try:
            json.loads(stdout)
        except ValueError:
            return "--outliers_from printed no JSON record: %r" % stdout[:200]
    return ""


CHECKS = {"qaas-quantize": check_quantize, "qaas-make-model": check_make_model}


def server_presets(source_dir):
    """The preset names the server knows, read from its source: quant/method_table.cc's
    `m.presets = {...}` rows where that table exists, else server/spec_validation.cc's
    Presets() map. A preset is the first string of each brace group at depth 2."""
    def names_in(text, start):
        names, depth, i, first = [], 0, start, False
        while i < len(text):
            c = text[i]
            if c == "{":
                depth += 1
                first = depth == 2
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            elif c == '"':
                j = text.index('"', i + 1)
                if first:
                    names.append(text[i + 1:j])
                    first = False
                i = j
            i += 1
        return names

    names = []
    table = os.path.join(source_dir, "quant/method_table.cc")
    if os.path.exists(table):
        with open(table) as f:
            text = f.read()
        for m in re.finditer(r"m\.presets = \{", text):
            names += names_in(text, m.end() - 1)
    if not names:
        with open(os.path.join(source_dir, "server/spec_validation.cc")) as f:
            text = f.read()
        at = text.find("kPresets = new")
        if at >= 0:
            names = names_in(text, text.index(">{", at) + 1)
    return set(names)


def check_presets(results, source_dir, section):
    """The presets the docs name are the server's."""
    def read(path):
        with open(os.path.join(source_dir, path)) as f:
            return f.read()
    server = server_presets(source_dir)
    if not server:
        results.fail("presets", "cannot find the preset table (quant/method_table.cc or server/spec_validation.cc)")
        return
    api_text = read("docs/api.md")
    api = re.search(r"`preset` is one of (.*?), or give", api_text, re.S)
    listed = set(re.findall(r"`([^`]+)`", api.group(1))) if api else set(re.findall(r"`([a-z0-9-]+)`", api_text))
    if (listed == server) if api else server <= listed:
        results.ok("docs/api.md lists the server's presets")
    else:
        results.fail("docs/api.md lists the server's presets",
                     "docs/api.md: %s; server: %s" % (sorted(listed & server if not api else listed), sorted(server)))
    doc = re.search(r"preset: (.*?); or recipe", read("python/qaas_client/__init__.py"), re.S)
    named = set(re.findall(r'"([^"]+)"', doc.group(1))) if doc else set()
    if named == server:
        results.ok("python qaas_client submit() docstring lists the server's presets")
    else:
        results.fail("python qaas_client submit() docstring lists the server's presets",
                     "docstring: %s; server: %s" % (sorted(named), sorted(server)))
    for preset in sorted(set(re.findall(r"--preset[ =]([A-Za-z0-9+_-]+)", section))):
        name = "README: --preset %s is a server preset" % preset
        if preset in server:
            results.ok(name)
        else:
            results.fail(name, "the server knows %s" % ", ".join(sorted(server)))


def main():
    args = [a for a in sys.argv[1:] if a != "-v"]
    verbose = "-v" in sys.argv[1:]
    if len(args) != 2:
        raise SystemExit(__doc__)
    build_dir, source_dir = (os.path.abspath(a) for a in args)
    shared = os.environ.get("QAAS_SHARED_DIR") or os.path.join(os.path.dirname(source_dir), "shared")
    if not os.path.exists(os.path.join(shared, "models/stories260k/config.json")):
        print("note: %s is absent: the commands that need ../shared are skipped" % shared)
        shared = None
    results = Results(verbose)
    bins = Binaries(build_dir)
    for name in BINARIES:
        if not os.access(bins.path(name), os.X_OK):
            raise SystemExit("%s is not built (%s)" % (name, bins.path(name)))

    with open(os.path.join(source_dir, "README.md")) as f:
        section = cli_section(f.read())
    commands = sh_commands(section)
    if not commands:
        results.fail("README CLI section", "no ```sh command lines found")

    # --help of every binary prints its usage message and its flags.
    for name in BINARIES:
        r = bins.run([bins.path(name), "--help"], timeout=30)
        if not r.stdout.startswith(name + ": ") or "SetProgramUsageMessage() never called" in r.stdout:
            results.fail("%s --help" % name, "no usage message:\n%s%s" % (r.stdout[:300], r.stderr[:300]))
        elif not re.search(r"^    --", r.stdout, re.M):
            results.fail("%s --help" % name, "lists no flags:\n%s" % r.stdout[:300])
        else:
            results.ok("%s --help" % name)

    work = tempfile.mkdtemp(prefix="qaas-readme-cli-")
    try:
        runner = Runner(bins, shared, source_dir, work, results)
        for argv, written in commands:
            binary, rest = argv[0], argv[1:]
            name = "README: " + written
            if binary not in BINARIES:
                results.fail(name, "unknown program %r: map it in tests/docs/readme_cli_test.py" % binary)
                continue
            flags, positionals = split_flags(rest)
            if not check_flags(results, bins, name, binary, flags):
                continue
            key = binary
            if binary == "qaasctl":
                sub = positionals[0] if positionals else ""
                key = (binary, sub)
                usage = bins.run([bins.path(binary), "--help"], timeout=30).stdout.splitlines()[0]
                if not re.search(r"\b%s\b" % re.escape(sub), usage):
                    results.fail(name, "qaasctl has no subcommand %r (usage: %s)" % (sub, usage))
                    continue
            if key in NEEDS_SERVER:
                if check_parses(results, bins, name, binary, rest):
                    results.ok(name, "flags parsed; not run: " + NEEDS_SERVER[key])
            elif binary in CHECKS:
                runner.run(name, binary, rest)
            else:
                results.fail(name, "neither runnable offline by this test nor listed in NEEDS_SERVER: %r" % (key,))

        check_presets(results, source_dir, section)
        seen = set()
        for binary, flag, where in prose_flags(section):
            if (binary, flag) in seen:
                continue
            seen.add((binary, flag))
            name = "README prose: %s --%s" % (binary, flag)
            if flag in bins.flags(binary):
                results.ok(name)
            else:
                results.fail(name, "%s has no flag --%s (paragraph: %s...)" % (binary, flag, where))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("%d passed, %d failed, %d skipped, %d known defects of the binaries (XFAIL)" % (
        len(results.passed), len(results.failed), len(results.skipped), len(results.xfailed)))
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
