"""PNG plots of retrieval curves (matplotlib's Agg canvas: no display needed).

Each function returns PNG bytes, so the same picture can go to a file
(`save_png`) and to TensorBoard (`Run.log_image`).

Curves come from utils.metrics.retrieval_report:
  PR curve    hamming: hash lookup, one point per radius r = 0..K;
              embeddings: ranking, (recall@N, precision@N) at ~100 log-spaced N.
  top-N       precision@N for N = 1..n_max.
"""
import io as _io

from utils import io


def _figure(columns=1, width=5.0, height=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width * columns, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure):
    figure.tight_layout()
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def pr_points(report):
    """(recall, precision) of one direction's report: hash lookup for codes, ranking otherwise."""
    curve = report.get("hash_lookup") or report["ranking_pr"]
    return curve["recall"], curve["precision"]


def _pr_axes(axes, title):
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.set_title(title)


def pr_curve_png(reports, title="precision-recall"):
    """One line per direction; `reports` maps direction -> retrieval_report dict."""
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    for direction, report in reports.items():
        recall, precision = pr_points(report)
        marker = "o" if "hash_lookup" in report else None
        axes.plot(recall, precision, marker=marker, markersize=3, label=f"{direction} (mAP {report['map']:.3f})")
    kind = "hash lookup, radius 0..K" if any("hash_lookup" in r for r in reports.values()) else "ranking"
    _pr_axes(axes, f"{title} ({kind})")
    axes.legend(fontsize=8)
    return _png(figure)


def top_n_png(reports, title="top-N precision"):
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    for direction, report in reports.items():
        axes.plot(report["top_n"]["n"], report["top_n"]["precision"], label=direction)
    axes.set_xlabel("N (items retrieved)")
    axes.set_ylabel("precision@N")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    axes.legend(fontsize=8)
    return _png(figure)


def compare_png(runs, curve="pr", title="comparison"):
    """Several runs overlaid, one panel per direction; `runs` maps run label -> {direction -> report}."""
    directions = []
    for reports in runs.values():
        directions += [d for d in reports if d not in directions]
    columns = min(2, len(directions))
    rows = -(-len(directions) // columns)
    figure = _figure(columns=columns, height=4.0 * rows)
    for panel, direction in enumerate(directions):
        axes = figure.add_subplot(rows, columns, panel + 1)
        for label, reports in runs.items():
            if direction not in reports:
                continue
            report = reports[direction]
            if curve == "pr":
                recall, precision = pr_points(report)
                axes.plot(recall, precision, marker="o" if "hash_lookup" in report else None, markersize=3,
                          label=f"{label} ({report['map']:.3f})")
            else:
                axes.plot(report["top_n"]["n"], report["top_n"]["precision"], label=label)
        if curve == "pr":
            _pr_axes(axes, f"{title}: {direction}")
        else:
            axes.set_xlabel("N")
            axes.set_ylabel("precision@N")
            axes.grid(alpha=0.3)
            axes.set_title(f"{title}: {direction}")
        axes.legend(fontsize=7)
    return _png(figure)


def save_png(path, png_bytes):
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(png_bytes)
