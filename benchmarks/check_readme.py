"""Checks README.md and every page of docs/: figure blocks, figure tables, links, length.

    python benchmarks/check_readme.py            # prints each problem; exit status 1 on any
    python benchmarks/check_readme.py --write    # rewrites every block from its results files

Rules, for README.md, CHANGELOG.md and docs/*.md (docs/_incoming/, text waiting to be placed, is not checked;
see benchmarks/readme_figures.py for the block syntax):
- each `<!-- figures: RENDERER FILE ... -->` block must equal the rendering of its results
  files (a missing file is a failure naming it: rerun the command shown beside the block; a
  FILE written `?FILE` is optional and renders without it);
- a Markdown table outside a figure block that holds a decimal number is a failure unless the
  line before it is `<!-- not-figures -->` (settings tables: values that are chosen, not measured);
- every relative link `[text](path#anchor)` must name an existing file, and its anchor a
  heading of that page (GitHub's anchors);
- README.md has at most README_MAX_LINES lines (the rest belongs in docs/).
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

README_MAX_LINES = 300
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
    missing = [p for p in paths if not p.startswith(readme_figures.OPTIONAL)
               and not os.path.exists(os.path.join(repo, p))]
    if missing:
        return None, f"results file missing: {', '.join(missing)} (run the command shown beside the block)"
    try:
        return readme_figures.render_block(renderer, paths, repo), None
    except (KeyError, IndexError, TypeError, ValueError) as error:
        return None, f"cannot render {renderer} from {', '.join(paths)}: {type(error).__name__}: {error}"


def check(readme=os.path.join(REPO, "README.md"), repo=REPO, write=False):
    """Returns a list of problems of one page (empty: every figure block matches and every figure
    table is marked). write=True replaces the text of every block whose results files exist by
    their rendering (atomically; the problems returned are those found before)."""
    with open(readme) as f:
        lines = f.read().split("\n")
    name = os.path.relpath(readme, repo) if os.path.abspath(readme).startswith(os.path.abspath(repo)) \
        else os.path.basename(readme)
    problems, replacements = [], []
    for begin, end, renderer, paths in blocks(lines):
        where = f"{name} line {begin + 1} ({renderer} {' '.join(paths)})"
        if end is None or any(BEGIN.match(line.strip()) for line in lines[begin + 1:end]):
            problems.append(f"{where}: no closing {END} before the next block")
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
        problems.append(f"{name} line {number}: a table with decimal numbers outside any "
                        f"figures block; put it in a <!-- figures: ... --> block or mark it {NOT_FIGURES}")
    if write and replacements:
        for begin, end, expected in sorted(replacements, reverse=True):
            lines[begin + 1:end] = [""] + expected.split("\n") + [""]
        with io.atomic_path(readme) as tmp:
            with open(tmp, "w") as f:
                f.write("\n".join(lines))
    return problems


LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def pages(repo=REPO):
    """README.md, CHANGELOG.md and every docs/*.md (docs/_incoming/ holds text not yet placed:
    not a page)."""
    found = [os.path.join(repo, name) for name in ("README.md", "CHANGELOG.md")
             if name == "README.md" or os.path.exists(os.path.join(repo, name))]
    docs = os.path.join(repo, "docs")
    if os.path.isdir(docs):
        found += [os.path.join(docs, n) for n in sorted(os.listdir(docs)) if n.endswith(".md")]
    return found


def anchor(heading, seen):
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces as hyphens; a repeated
    anchor gets -1, -2, ... (`seen` counts them)."""
    text = re.sub(r"[^\w\- ]", "", CODE_SPAN.sub(lambda m: m.group(0)[1:-1], heading).strip().lower())
    slug = text.replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return slug if count == 0 else f"{slug}-{count}"


def anchors(path):
    """Every heading anchor of a Markdown page (fenced code is skipped)."""
    found, seen, in_fence = set(), {}, False
    with open(path) as f:
        for line in f:
            if line.strip().startswith("```"):
                in_fence = not in_fence
            elif not in_fence and re.match(r"#{1,6} ", line):
                found.add(anchor(line.lstrip("#").strip(), seen))
    return found


def links(lines):
    """(line number, target) of every Markdown link outside fenced code and code spans."""
    found, in_fence = [], False
    for i, line in enumerate(lines):
        if line.strip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and not line.startswith("    "):
            found += [(i + 1, m.group(1)) for m in LINK.finditer(CODE_SPAN.sub("", line))]
    return found


def check_links(page, repo=REPO):
    """Problems of the page's relative links: a missing file, or an anchor no heading has."""
    with open(page) as f:
        lines = f.read().split("\n")
    name, problems = os.path.relpath(page, repo), []
    for number, target in links(lines):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            problems.append(f"{name} line {number}: link to {target}: no such file {os.path.relpath(resolved, repo)}")
        elif fragment and resolved.endswith(".md") and fragment not in anchors(resolved):
            problems.append(f"{name} line {number}: link to {target}: {os.path.relpath(resolved, repo)} "
                            f"has no heading with the anchor #{fragment}")
    return problems


def check_length(readme, limit=README_MAX_LINES):
    """A problem when the front page is longer than `limit` lines."""
    with open(readme) as f:
        count = len(f.read().rstrip("\n").split("\n"))
    return [] if count <= limit else [f"{os.path.basename(readme)} has {count} lines, more than {limit}: "
                                      f"move text to a page of docs/ and link to it"]


def check_all(repo=REPO, write=False):
    """Every problem of README.md and docs/*.md: figure blocks, figure tables, links, the front
    page's length."""
    problems = []
    for page in pages(repo):
        problems += check(page, repo=repo, write=write) + check_links(page, repo)
    return problems + check_length(os.path.join(repo, "README.md"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default=None, help="check this one page only (default: README.md and docs/)")
    parser.add_argument("--write", action="store_true", help="rewrite every block from its results files")
    args = parser.parse_args(argv)
    problems = check(args.readme, write=args.write) if args.readme else check_all(write=args.write)
    for problem in problems:
        print(problem + "\n")
    if args.write:
        print("blocks rewritten from their results files; rerun without --write to see what remains")
    print(f"{len(problems)} problem(s)" if problems else
          "README and docs: figures match their results files, links resolve, README within its length")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
