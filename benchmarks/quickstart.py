"""The README's quick-start commands, run as a user runs them: wall time and printed figures.

    python benchmarks/quickstart.py                       # both commands, once each
    python benchmarks/quickstart.py --only wiki --repeats 2

Each command runs in a fresh process (`python train.py ...` from the repository root, its run
folder under a temporary --runs-dir so that runs/ is left alone); the wall time includes
starting Python and TensorFlow. The figures are the final ones train.py prints (its last JSON
object). With --repeats > 1 the results file says whether the repeats printed the same figures.
Writes benchmarks/results/quickstart.json (README blocks: `quickstart` renderer).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import results_io  # noqa: E402

COMMANDS = {  # name -> the README's command line (train.py options)
    "synthetic": [],
    "wiki": ["--dataset", "wiki", "--backbone", "features", "--bits", "32"],
    # not a quick-start line: the tuned Wikipedia run, timed for its wall-time goal (README, SSAH)
    "wiki-tuned": ["--dataset", "wiki", "--backbone", "features", "--bits", "32", "--variant", "tuned"],
}


def printed_figures(stdout):
    """The last JSON object train.py printed (its final figures)."""
    start = stdout.rfind("\n{")
    if start < 0:
        raise ValueError("train.py printed no final figures")
    return json.loads(stdout[start + 1:])


def run_command(name, options, runs_dir, timeout):
    readme_command = " ".join(["python train.py"] + options)
    command = [sys.executable, "train.py", *options, "--runs-dir", runs_dir, "--run-name", name]
    print(f"{readme_command}  (run folder {runs_dir}/{name})", flush=True)
    start = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{readme_command} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    final = printed_figures(out.stdout)
    print(f"  {seconds:.1f} s; " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(final.items())
                                           if isinstance(v, float)), flush=True)
    return {"name": name, "readme_command": readme_command,
            "command": " ".join(shlex.quote(c) for c in ["python"] + command[1:]),
            "seconds": seconds, "final": final}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="synthetic,wiki", help=f"any of {', '.join(COMMANDS)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command (figures compared)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    parser.add_argument("--out", default=results_io.results_path("quickstart.json"))
    args = parser.parse_args(argv)
    names = args.only.split(",")
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        parser.error(f"unknown command(s) {unknown}; choose from {', '.join(COMMANDS)}")
    runs = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for name in names:
            repeats = [run_command(f"{name}-{i}", COMMANDS[name], runs_dir, args.timeout)
                       for i in range(args.repeats)]
            first = repeats[0]
            runs.append({**first, "name": name, "repeats": len(repeats),
                         "seconds_per_repeat": [r["seconds"] for r in repeats],
                         "identical_figures": all(r["final"] == first["final"] for r in repeats)})
    results_io.write_results(args.out, {"runs": runs})
    return runs


if __name__ == "__main__":
    main()
