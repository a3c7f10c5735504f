"""Checks that every figure block of README.md equals what its results files render.

    python benchmarks/check_readme.py            # prints each difference; exit status 1 on any
    python benchmarks/check_readme.py --write    # rewrites every block from its results files

Rules (see benchmarks/readme_figures.py for the block syntax):
- each `<!-- figures: RENDERER FILE ... -->` block must equal the rendering of its results
  files (a missing file is a failure naming it: rerun the command shown beside the block);
- a Markdown table outside a figure block that holds a decimal number is a failure unless the
  line before it is `<!-- not-figures -->` (settings tables: values that are chosen, not measured).
"""
import argparse
import difflib
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import readme_figures  # noqa: E402
from utils import io  # noqa: E402

BEGIN = re.compile(r"^<!-- figures: (\S+)((?: \S+)+) -->$")
END = "<!-- /figures -->"
NOT_FIGURES = "<!-- not-figures -->"
DECIMAL = re.compile(r"\d\.\d")


def blocks(lines):
    """Yields (begin line index, end line index or None, renderer, paths) per figure block."""
    for i, line in enumerate(lines):
        match = BEGIN.match(line.strip())
        if match:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == END), None)
            yield i, end, match.group(1), match.group(2).split()


def unmarked_tables(lines):
    """Line numbers (1-based) of tables with decimal numbers outside figure blocks and not
    declared `<!-- not-figures -->` on the last non-blank line before them; fenced code is skipped."""
    found, in_block, in_fence, last_text = [], False, False, ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif BEGIN.match(stripped):
            in_block = True
        elif stripped == END:
            in_block = False
        elif not (in_fence or in_block) and stripped.startswith("|") and not last_text.startswith("|"):
            rows = []
            for row in lines[i:]:
                if not row.strip().startswith("|"):
                    break
                rows.append(row)
            if any(DECIMAL.search(row) for row in rows) and last_text != NOT_FIGURES:
                found.append(i + 1)
        last_text = stripped if stripped else ("" if last_text.startswith("|") else last_text)
    return found


def expected_block(renderer, paths, repo):
    """The rendered block, or (None, reason) when a results file is missing or cannot be rendered."""
    missing = [p for p in paths if not os.path.exists(os.path.join(repo, p))]
    if missing:
        return None, f"results file missing: {', '.join(missing)} (run the command shown beside the block)"
    try:
        return readme_figures.render_block(renderer, paths, repo), None
    except (KeyError, IndexError, TypeError, ValueError) as error:
        return None, f"cannot render {renderer} from {', '.join(paths)}: {type(error).__name__}: {error}"


def check(readme=os.path.join(REPO, "README.md"), repo=REPO, write=False):
    """Returns a list of problems (empty: every figure block matches and every figure table is
    marked). write=True replaces the text of every block whose results files exist by their
rendering (atomically; the problems returned are those found before)."""
    with open(readme) as f:
        lines = f.read().split("\n")
    problems, replacements = [], []
    for begin, end, renderer, paths in blocks(lines):
        where = f"{os.path.basename(readme)} line {begin + 1} ({renderer} {' '.join(paths)})"
        if end is None:
            problems.append(f"{where}: no closing {END}")
            continue
        expected, reason = expected_block(renderer, paths, repo)
        if reason:
            problems.append(f"{where}: {reason}")
            continue
        replacements.append((begin, end, expected))
        actual = "\n".join(lines[begin + 1:end]).strip("\n")  # blank lines around the block's text are free
        if actual != expected:
            diff = difflib.unified_diff(actual.split("\n"), expected.split("\n"), "README", "results", lineterm="", n=0)
            problems.append(f"{where}: README differs from the results file:\n" + "\n".join(diff))
    for number in unmarked_tables(lines):
        problems.append(f"{os.path.basename(readme)} line {number}: a table with decimal numbers outside any "
                        f"figures block; put it in a <!-- figures: ... --> block or mark it {NOT_FIGURES}")
    if write and replacements:
        for begin, end, expected in sorted(replacements, reverse=True):
            lines[begin + 1:end] = [""] + expected.split("\n") + [""]
        with io.atomic_path(readme) as tmp:
            with open(tmp, "w") as f:
                f.write("\n".join(lines))
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    parser.add_argument("--write", action="store_true", help="rewrite every block from its results files")
    args = parser.parse_args(argv)
    problems = check(args.readme, write=args.write)
    for problem in problems:
        print(problem + "\n")
    if args.write:
        print("blocks rewritten from their results files; rerun without --write to see what remains")
    print(f"{len(problems)} problem(s)" if problems else "README figures match their results files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
