"""Results files of the benchmarks: one atomic JSON per figure set, with its provenance.

Every benchmark writes its figures through `write_results`, which adds a `provenance` block
(machine, git commit, command line, date) so that a README figure can say where and from
what code it was measured; `benchmarks/check_readme.py` checks the README against these files.
"""
import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from utils import io  # noqa: E402


def results_path(name):
    """benchmarks/results/NAME (absolute)."""
    return os.path.join(RESULTS, name)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names():
    """Names of the NVIDIA GPUs (nvidia-smi), [] when there is none; TensorFlow is not imported."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def package_version(module):
    """Version of the installed distribution that provides `module` (tensorflow may come as
    tensorflow-cpu, for example), without importing it; None when it is not installed."""
    for distribution in importlib.metadata.packages_distributions().get(module, [module]):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git(*args):
    """git's output in the repository, None without git or outside a checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine():
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "tensorflow": package_version("tensorflow"),
            "numpy": package_version("numpy"), "gpu": gpu_names()}


def code_version():
    """The git commit of the working tree and whether tracked files other than
    benchmarks/results/ differ from it (results files rewritten by a run do not count)."""
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


# Taken when a benchmark starts (it imports this module first): the code that produced its
# figures, even if the tree changes while it runs.
CODE_AT_START = code_version()


def provenance(argv=None):
    """Where and from what these figures come: machine, commit (at the start), command, date (UTC, now)."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), REPO) if argv and argv[0].endswith(".py") else argv[0]
    return {"machine": machine(), **CODE_AT_START,
            "command": " ".join(["python", shlex.quote(script)] + [shlex.quote(a) for a in argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def write_results(path, data, argv=None, announce=True):
    """Writes `data` plus a fresh `provenance` block (replacing any in `data`) to `path` atomically."""
    io.save_json(path, {**data, "provenance": provenance(argv)})
    if announce:
        print(f"results written to {os.path.relpath(os.path.abspath(path), REPO)}", flush=True)
    return path


def describe(provenance_block):
    """One README line naming the machine, the commit, the date and the command of a results file."""
    p = provenance_block or {}
    m, date = p.get("machine"), str(p["date"])[:10] if p.get("date") else "date unknown"
    command = f": `{p['command']}`" if p.get("command") else ""
    if not (m and p.get("commit")):  # a file written before provenance was recorded
        added = f"file added in commit {p['added_in_commit'][:7]}, " if p.get("added_in_commit") else ""
        return f"Machine and commit of the run not recorded ({added}{date}){command}."
    gpu = ", ".join(m.get("gpu") or []) or "no GPU"
    dirty = " with uncommitted changes" if p.get("dirty") else ""
    return (f"Measured on {m.get('cpu')} ({m.get('cores')} cores), {gpu}, {m.get('os')}, Python {m.get('python')}, "
            f"TensorFlow {m.get('tensorflow')}; commit {p['commit'][:7]}{dirty}, {date}{command}.")
