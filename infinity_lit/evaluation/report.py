"""Comparison reports over runs: one self-contained HTML page (images embedded as base64) and a Markdown twin.

For each run folder given, the report gathers, recursively:

- every ``metrics.json`` (from ``eval score`` / ``eval recon``) → one row of the metrics table;
- every folder of TensorBoard event files → training curves (one panel per scalar tag, one line per run)
  and per-scale plots from scalars named ``…psnr_scale_k`` / ``…bit_acc_scale_k`` (last logged value
  against k), plus the per-scale PSNR of ``eval recon``;
- every sample folder (``metadata.jsonl`` + PNGs from ``eval sample``) → sample grids side by side: one
  column per folder, one row per prompt (aligned by prompt text, not position), with a warning when the
  folders were sampled from different prompts.

Plots are drawn with matplotlib's Agg backend (no display needed); everything is readable offline. The
Markdown file refers to the same pictures written under ``OUT/assets/``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from infinity_lit.data.images import load_rgb

from .images import METADATA, list_images, read_metadata
from .tensorboard import PER_SCALE_TAG, event_dirs, per_scale_values, read_scalars

#: What each metric means, printed under the table.
LEGEND = {
    "FID": "Fréchet Inception distance to the reference set (Inception pool3, 2048-d); lower is better; "
    "only comparable between sets of the same size.",
    "KID": "kernel Inception distance (unbiased MMD², cubic kernel), mean ± std over subsets; lower is better.",
    "CLIP": "CLIP score, mean of 100·max(cos(image, prompt), 0) under the named CLIP weights; higher is better.",
    "PSNR": "reconstruction PSNR in dB on [-1,1] images (data range 2), per-image values capped at 100 dB.",
    "SSIM": "reconstruction SSIM (Gaussian window 11, σ 1.5), 1 = identical.",
    "rFID": "FID of tokenizer reconstructions against their originals; lower is better.",
}


@dataclass
class RunData:
    """What was found under one run folder."""

    name: str
    root: Path
    metrics: list[tuple[Path, dict]] = field(default_factory=list)
    scalars: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    sample_dirs: list[Path] = field(default_factory=list)


def collect_run(root: str | Path, name: str | None = None) -> RunData:
    """Gather metrics files, TensorBoard scalars and sample folders under ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {str(root)!r} does not exist")
    run = RunData(name or root.name, root)
    for path in sorted(root.rglob("metrics.json")):
        try:
            run.metrics.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); rerun the evaluation that wrote it") from err
    for d in event_dirs(root):
        label = run.name if d == root else f"{run.name}/{d.relative_to(root)}"
        scalars = read_scalars(d)
        if scalars:
            run.scalars[label] = scalars
    run.sample_dirs = sorted(p.parent for p in root.rglob(METADATA) if list_images(p.parent))
    return run


# ---------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------


def _fmt(value, digits: int) -> str:
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def short_value(value) -> str:
    """A setting for a table cell: None → "–", a list joined by commas, a path by its file name."""
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(short_value(v) for v in value)
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return Path(value).name
    return str(value)


TABLE_COLUMNS = (
    "run",
    "file",
    "kind",
    "images",
    "FID",
    "KID",
    "CLIP",
    "PSNR",
    "SSIM",
    "rFID",
    "cfg",
    "τ",
    "seed",
    "checkpoint",
)


def metrics_rows(runs: Sequence[RunData]) -> list[dict[str, str]]:
    """One row per metrics.json, formatted for the table (``TABLE_COLUMNS``), followed by one row per
    aspect-ratio bucket of a record that has them (``metrics.per_aspect_ratio``: ``eval recon`` on bucketed
    shards), its file named with the bucket (``metrics.json · h/w 0.5``)."""

    def row(run: RunData, file: str, kind: str, images: Any, m: dict, s: dict, checkpoint: Any) -> dict:
        kid = m.get("kid_mean")
        kid_txt = f"{_fmt(kid, 4)} ± {_fmt(m.get('kid_std'), 4)}" if kid is not None else "–"
        return {
            "run": run.name,
            "file": file,
            "kind": kind,
            "images": _fmt(images, 0),
            "FID": _fmt(m.get("fid"), 2),
            "KID": kid_txt,
            "CLIP": _fmt(m.get("clip_score"), 2),
            "PSNR": _fmt(m.get("psnr"), 2),
            "SSIM": _fmt(m.get("ssim"), 4),
            "rFID": _fmt(m.get("rfid"), 2),
            "cfg": short_value(s.get("cfg")),
            "τ": short_value(s.get("tau")),
            "seed": short_value(s.get("seed")),
            "checkpoint": short_value(checkpoint),
        }

    rows = []
    for run in runs:
        for path, rec in run.metrics:
            m = rec.get("metrics", {})
            s = rec.get("sampling", {})
            file, kind = str(path.relative_to(run.root)), str(rec.get("kind", "?"))
            checkpoint = s.get("checkpoint", rec.get("checkpoint"))
            rows.append(row(run, file, kind, rec.get("num_images"), m, s, checkpoint))
            for name, bucket in (m.get("per_aspect_ratio") or {}).items():
                if isinstance(bucket, dict):
                    images = bucket.get("num_images")
                    rows.append(row(run, f"{file} · h/w {name}", kind, images, bucket, s, checkpoint))
    return rows


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (100 dpi, tight box); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: Sequence[RunData], max_panels: int = 24) -> list[tuple[str, bytes]]:
    """Training curves: one panel per scalar tag (per-scale tags and ``epoch`` left out), one line per run.

    Returns:
        [(title, PNG bytes)], one figure per group of up to ``max_panels`` tags.
    """
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in runs:
        for label, scalars in run.scalars.items():
            for tag, points in scalars.items():
                if tag == "epoch" or tag.startswith("hp_metric") or PER_SCALE_TAG.match(tag):
                    continue
                series.setdefault(tag, {})[label] = points
    tags = sorted(series)
    if not tags:
        return []
    plt = pyplot()
    # One colour per run across every panel, and every run in the legend (a panel may lack some runs).
    colours = line_colours(sorted({label for lines in series.values() for label in lines}))
    figures = []
    for start in range(0, len(tags), max_panels):
        group = tags[start : start + max_panels]
        cols = min(3, len(group))
        rows = math.ceil(len(group) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, tag in zip(axes.flat, group):
            for label, points in sorted(series[tag].items()):
                steps, values = zip(*points)
                ax.plot(
                    steps, values, label=label, color=colours[label], marker="." if len(points) < 30 else None
                )
            ax.set_title(tag, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(group) :]:
            ax.axis("off")
        from matplotlib.lines import Line2D

        shown = sorted({label for tag in group for label in series[tag]})
        legend_rows = math.ceil(len(shown) / 4)
        top = 1 - 0.04 * legend_rows / rows
        fig.legend(
            [Line2D([], [], color=colours[label]) for label in shown],
            shown,
            loc="upper center",
            ncol=min(4, len(shown)),
            fontsize=8,
            bbox_to_anchor=(0.5, 1.0),
        )
        fig.tight_layout(rect=(0, 0, 1, top))
        figures.append(
            (f"Training curves ({start + 1}–{start + len(group)} of {len(tags)} tags)", figure_png(fig))
        )
    return figures


def line_colours(labels: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A distinct colour per label (matplotlib's tab10, then tab20 and a sampled colormap for more), so
    one run has one colour in every panel of a figure."""
    from matplotlib import colormaps

    n = len(labels)
    if n <= 10:
        colours = [colormaps["tab10"](i) for i in range(n)]
    elif n <= 20:
        colours = [colormaps["tab20"](i) for i in range(n)]
    else:
        colours = [colormaps["turbo"](i / (n - 1)) for i in range(n)]
    return dict(zip(labels, colours))


def per_scale_series(runs: Sequence[RunData]) -> dict[str, dict[str, dict[int, float]]]:
    """metric → run label → {k: value}: TensorBoard per-scale scalars (last value) and eval recon's PSNR."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for run in runs:
        for label, scalars in run.scalars.items():
            for metric, values in per_scale_values(scalars).items():
                out.setdefault(metric, {})[label] = values
        for path, rec in run.metrics:
            per_scale = rec.get("metrics", {}).get("psnr_per_scale")
            if isinstance(per_scale, dict) and per_scale:
                label = f"{run.name}/{path.parent.relative_to(run.root)}".rstrip("/.")
                out.setdefault("eval recon psnr", {})[label] = {
                    int(k): float(v) for k, v in per_scale.items()
                }
    return out


def plot_per_scale(runs: Sequence[RunData]) -> bytes | None:
    """Per-scale PSNR (dB) and bit accuracy against the scale index k, one line per run; None if no data."""
    data = per_scale_series(runs)
    if not data:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    names = sorted(data)
    colours = line_colours(sorted({label for lines in data.values() for label in lines}))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, values in sorted(data[name].items()):
            ks = sorted(values)
            ax.plot(ks, [values[k] for k in ks], marker="o", label=label, color=colours[label])
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("scale k (first k scales decoded / predicted)", fontsize=8)
        ax.set_ylabel("PSNR (dB)" if "psnr" in name else "bit accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


# ---------------------------------------------------------------------------------------------------------
# Sample grids
# ---------------------------------------------------------------------------------------------------------


def thumbnail_png(path: Path, size: int) -> bytes:
    """An image file as RGB PNG bytes whose longest side is at most ``size`` pixels (never enlarged)."""
    im = load_rgb(path)  # the toolkit's one image policy (bit depths, transparency, orientation)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def sample_table(
    runs: Sequence[RunData], max_rows: int = 8
) -> tuple[list[str], list[tuple[str, list[Path | None]]], list[str]]:
    """Side-by-side samples, aligned by prompt: column labels (one per sample folder), rows (prompt, image
    per column, None where a folder has no image for it) and warnings.

    A row is a prompt: the n-th image of a prompt in one folder sits beside the n-th image of the same
    prompt in the others, whatever their positions in the prompt lists, so different prompts never share
    a row. Rows follow the first folder's order (then prompts only later folders have), first
    ``max_rows``. One warning per folder whose prompts differ from the first folder's.
    """
    columns: list[str] = []
    per_col: list[dict[tuple[str, int], Path]] = []
    order: list[tuple[str, int]] = []
    for run in runs:
        for d in run.sample_dirs:
            columns.append(f"{run.name}/{d.relative_to(run.root)}".rstrip("/."))
            entries: dict[tuple[str, int], Path] = {}
            seen: dict[str, int] = {}
            records = read_metadata(d)
            for _, rec in sorted(enumerate(records), key=lambda ir: (int(ir[1].get("index", ir[0])), ir[0])):
                path = d / rec.get("file", "")
                if not path.is_file():
                    continue
                prompt = str(rec.get("prompt", ""))
                key = (prompt, seen.get(prompt, 0))
                seen[prompt] = key[1] + 1
                entries[key] = path
                if key not in order:
                    order.append(key)
            per_col.append(entries)
    warnings = []
    if per_col:
        first = set(per_col[0])
        for label, entries in zip(columns[1:], per_col[1:]):
            if set(entries) != first:
                only_here, missing = len(set(entries) - first), len(first - set(entries))
                warnings.append(
                    f"{label} was sampled from other prompts than {columns[0]} ({only_here} of its images have "
                    f"prompts {columns[0]} lacks, {missing} of {columns[0]}'s prompts are missing): only rows "
                    "with an image in both compare the same prompt"
                )
    rows = []
    for prompt, n in order[:max_rows]:
        label = prompt if n == 0 else f"{prompt} (#{n + 1})"
        rows.append((label, [c.get((prompt, n)) for c in per_col]))
    return columns, rows, warnings


# ---------------------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------------------

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; }
.small { font-size: 0.85em; color: #555; }
.warn { color: #a15c00; }
"""

_NUMERIC = {"images", "FID", "KID", "CLIP", "PSNR", "SSIM", "rFID"}


def html_page(title: str, body: Sequence[str], css: str = "") -> str:
    """A self-contained HTML document: ``title``, the body's lines, and ``PAGE_CSS`` plus ``css``."""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}{css}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def make_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    title: str = "infinity-lit evaluation report",
    max_sample_rows: int = 8,
    thumbnail_size: int = 128,
    headline: Sequence[tuple[str, str]] = (),
) -> tuple[Path, Path]:
    """Write ``OUT/report.html`` (self-contained) and ``OUT/report.md`` (+ ``OUT/assets/``) for the runs.

    Args:
        run_dirs: run folders (each searched recursively for metrics.json, event files, sample folders).
        out: output folder.
        title: page title.
        max_sample_rows: prompts shown in the sample grids.
        thumbnail_size: longest side (pixels) of sample thumbnails.
        headline: (label, formatted value) rows shown first, in a "Summary" table (e.g. the quickstart's
            quality floors).

    Returns:
        (path of the HTML page, path of the Markdown file).

    Raises:
        FileNotFoundError: a run folder does not exist. ValueError: no run folders.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    names = [Path(d).name for d in run_dirs]
    runs = [
        collect_run(d, name if names.count(name) == 1 else str(Path(d))) for d, name in zip(run_dirs, names)
    ]
    out = Path(out)
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)

    h: list[str] = []  # HTML body
    md: list[str] = []  # Markdown
    now = _dt.datetime.now().isoformat(timespec="seconds")
    h.append(f"<h1>{html.escape(title)}</h1><p class='small'>generated {now}</p>")
    md += [f"# {title}", "", f"generated {now}", ""]

    if headline:
        h.append("<h2>Summary</h2><table>")
        md += ["## Summary", "", "| | |", "|---|---:|"]
        for label, value in headline:
            h.append(f"<tr><td>{html.escape(label)}</td><td class='num'>{html.escape(value)}</td></tr>")
            md.append(f"| {md_cell(label)} | {md_cell(value)} |")
        h.append("</table>")
        md.append("")

    h.append("<h2>Runs</h2><ul>")
    md += ["## Runs", ""]
    for run in runs:
        summary = (
            f"{len(run.metrics)} metrics file(s), {len(run.scalars)} TensorBoard log(s), "
            f"{len(run.sample_dirs)} sample folder(s)"
        )
        h.append(
            f"<li><b>{html.escape(run.name)}</b> <code>{html.escape(str(run.root))}</code>: {summary}</li>"
        )
        md.append(f"- **{run.name}** `{run.root}`: {summary}")
    h.append("</ul>")
    md.append("")

    # Metrics table.
    rows = metrics_rows(runs)
    h.append("<h2>Metrics</h2>")
    md += ["## Metrics", ""]
    if rows:
        h.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS) + "</tr>")
        for r in rows:
            cells = "".join(
                f"<td class='{'num' if c in _NUMERIC else ''}'>{html.escape(r[c])}</td>"
                for c in TABLE_COLUMNS
            )
            h.append(f"<tr>{cells}</tr>")
        h.append("</table>")
        md.append("| " + " | ".join(TABLE_COLUMNS) + " |")
        md.append("|" + "|".join("---:" if c in _NUMERIC else "---" for c in TABLE_COLUMNS) + "|")
        md += ["| " + " | ".join(md_cell(r[c]) for c in TABLE_COLUMNS) + " |" for r in rows]
        h.append(
            "<ul class='small'>"
            + "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in LEGEND.items())
        )
        h.append("</ul>")
        md += [""] + [f"- **{k}**: {v}" for k, v in LEGEND.items()]
        warns = [
            (run.name, path.relative_to(run.root), w)
            for run in runs
            for path, rec in run.metrics
            for w in rec.get("warnings", [])
        ]
        if warns:
            h.append("<h3>Warnings</h3><ul class='warn'>")
            md += ["", "### Warnings", ""]
            for name, rel, w in warns:
                h.append(f"<li>{html.escape(f'{name}/{rel}')}: {html.escape(w)}</li>")
                md.append(f"- {name}/{rel}: {w}")
            h.append("</ul>")
    else:
        h.append(
            "<p>No metrics.json found (run <code>infinity-lit eval score</code> / <code>eval recon</code>).</p>"
        )
        md.append("No metrics.json found (run `infinity-lit eval score` / `eval recon`).")
    md.append("")

    def add_picture(caption: str, png: bytes, filename: str) -> None:
        (assets / filename).write_bytes(png)
        b64 = base64.b64encode(png).decode("ascii")
        h.append(
            f"<h3>{html.escape(caption)}</h3><img class='plot' alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
        )
        md.extend([f"### {caption}", "", f"![{caption}](assets/{filename})", ""])

    # Curves.
    h.append("<h2>Training curves</h2>")
    md += ["## Training curves", ""]
    curves = plot_curves(runs)
    for i, (caption, png) in enumerate(curves):
        add_picture(caption, png, f"curves_{i}.png")
    if not curves:
        h.append("<p>No TensorBoard scalars found.</p>")
        md += ["No TensorBoard scalars found.", ""]

    # Per scale.
    h.append("<h2>Per-scale quality</h2>")
    md += ["## Per-scale quality", ""]
    per_scale = plot_per_scale(runs)
    if per_scale is not None:
        add_picture("PSNR / bit accuracy after the first k scales", per_scale, "per_scale.png")
    else:
        h.append(
            "<p>No per-scale scalars (<code>…psnr_scale_k</code>, <code>…bit_acc_scale_k</code>) found.</p>"
        )
        md += ["No per-scale scalars (`…psnr_scale_k`, `…bit_acc_scale_k`) found.", ""]

    # Samples.
    h.append("<h2>Samples</h2>")
    md += ["## Samples", ""]
    columns, sample_rows, sample_warnings = sample_table(runs, max_sample_rows)
    for warning in sample_warnings:
        h.append(f"<p class='warn'>{html.escape(warning)}</p>")
        md += [f"> **Warning:** {warning}", ""]
    if sample_rows:
        h.append(
            "<table><tr><th>prompt</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
        )
        md.append("| prompt | " + " | ".join(md_cell(c) for c in columns) + " |")
        md.append("|---|" + "|".join("---" for _ in columns) + "|")
        for r, (prompt, paths) in enumerate(sample_rows):
            h_cells, md_cells = [], []
            for c, path in enumerate(paths):
                if path is None:
                    h_cells.append("<td>–</td>")
                    md_cells.append("–")
                    continue
                png = thumbnail_png(path, thumbnail_size)
                filename = f"sample_{r}_{c}.png"
                (assets / filename).write_bytes(png)
                b64 = base64.b64encode(png).decode("ascii")
                h_cells.append(
                    f"<td><img alt='{html.escape(path.name)}' src='data:image/png;base64,{b64}'></td>"
                )
                md_cells.append(f"![{path.name}](assets/{filename})")
            h.append(f"<tr><td class='small'>{html.escape(prompt)}</td>{''.join(h_cells)}</tr>")
            md.append(f"| {md_cell(prompt)} | " + " | ".join(md_cells) + " |")
        h.append("</table>")
    else:
        h.append(
            "<p>No sample folders (metadata.jsonl + PNGs from <code>infinity-lit eval sample</code>) found.</p>"
        )
        md.append("No sample folders (metadata.jsonl + PNGs from `infinity-lit eval sample`) found.")
    md.append("")

    page = html_page(title, h)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(page, encoding="utf-8")
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return html_path, md_path
