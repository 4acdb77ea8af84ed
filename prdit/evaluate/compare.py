"""The comparison of `prdit compare` (prdit.stages.compare): every experiment and baseline of one dataset
and size side by side.

Reads each row's metrics file (metrics/<ds>[/<name>]/<size>.json, written by `prdit evaluate`) and the
mid-slices of its report folder (mid_slices.npz), refuses rows evaluated differently (real set, extractor,
window, protocol), and writes into reports/<ds>/compare/<size>/: table.md, table.csv, table.html (self-
contained), fid.png (FID x10^3 per row with intervals and the real-vs-real floor), montage.png (real, then
each row: axial, coronal, sagittal mid-slices at one grey scale, the window) and compare.json (the numbers).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from prdit.errors import MissingInputError, PrditError  # noqa: E402
from prdit.evaluate.report import html_page  # noqa: E402
from prdit.io import atomic_dir, write_json  # noqa: E402
from prdit.viz import to_grey  # noqa: E402

PROJECT_ROW = (
    "prdit"  # the row of the project's own model when params have no experiments (prdit.stages.compare)
)
FLOOR_ROW = "real (floor)"
FLOOR_METRIC = "real_floor"  # the floor row's suffix in MLflow metric names
VIEWS = ("axial", "coronal", "sagittal")
MID_SLICES = "mid_slices.npz"  # in each evaluation's report folder (prdit.evaluate.run)
CELL = 160  # montage panel side (pixels)
LABEL_W = 140  # montage row-label column width
LABEL_CHARS = 22  # characters of a row label that fit LABEL_W in the default font
HEADER_H = 18  # montage column-title band height
GAP = 4  # montage spacing between panels (pixels)
# Floors of one real set are equal when the evaluations read the same cached real features; evaluations
# running at once on different GPUs may each extract them (float32, nondeterministic kernels: relative
# differences near 1e-6). Another real set moves the floors by percent. 1e-3 lies between the two.
FLOOR_RTOL = 1e-3

# What every row must share to be compared: (dotted key in the metrics file, required). An optional key
# (recorded by the paper protocol only) is compared where both rows have it and never noted as missing.
SAME_EVALUATION: tuple[tuple[str, bool], ...] = (
    ("protocol", True),
    ("extractor.name", True),
    ("extractor.pretrained", True),
    ("extractor.sha256", True),
    ("input.window", True),
    ("input.extractor_axes", True),
    ("reference_set", True),
    ("reference_ids", False),
    ("n.real_train", True),
    ("n.real_heldout", True),
    ("feature_cache", True),
)
SAME_FLOORS = ("fid_floor", "mmd_reference_floor")  # the same real set gives the same floors


class ComparisonError(PrditError):
    """The rows cannot be compared: they were evaluated differently; the message names the two rows."""


@dataclass(frozen=True)
class Column:
    """One metric column: its key in compare.json, label, and the metrics-file keys of a row and of the floor."""

    key: str
    label: str
    value: str  # metrics key of a generated row
    floor: str  # metrics key of the real-vs-real floor
    spread: str | None = None  # 'ci95': `<value>_ci95` interval; 'std': `<value>_std`


COLUMNS: tuple[Column, ...] = (
    Column("fid", "FID", "fid", "fid_floor", "ci95"),
    Column("fid_x1e3", "FID x10^3", "fid_x1e3", "fid_floor_x1e3", "ci95"),
    Column("mmd", "MMD (reference)", "mmd_reference", "mmd_reference_floor", "ci95"),
    Column("ms_ssim", "MS-SSIM", "ms_ssim", "ms_ssim_floor", "std"),
    Column("seam_ratio", "seam ratio", "seam_ratio", "seam_ratio_real"),
    Column("texture_ratio", "texture ratio", "texture_ratio", "texture_ratio_floor"),
)
FLOOR_NOTE = (
    f"{FLOOR_ROW}: FID and MMD of real held-out (val + test) vs real train, with their intervals; MS-SSIM "
    "over real train pairs; seam ratio of real train; texture ratio held-out / train. A row near the floor "
    "is as close to the training set as unseen real scans are."
)


@dataclass(frozen=True)
class Row:
    """One compared row: an experiment, the project's own model, or a baseline, with its metrics."""

    name: str
    kind: str  # 'experiment', 'project' or 'baseline'
    metrics_file: Path
    report_dir: Path
    metrics: dict


def read_row(path: Path, report_dir: Path, dataset: str, size: int, label: str, kind: str) -> Row:
    """The row's metrics file `path` read (its report folder: `report_dir`); MissingInputError naming the
    file when it is not there."""
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInputError(
            f"{path}: no metrics for the {kind} row {label!r} of the comparison (evaluate it first)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ComparisonError(f"{path}: unreadable metrics file ({type(exc).__name__})") from None
    if not isinstance(metrics, dict):
        raise ComparisonError(f"{path}: not a metrics file (a JSON object expected)")
    if (metrics.get("dataset"), metrics.get("size")) != (dataset, size):
        raise ComparisonError(
            f"{path}: metrics of {metrics.get('dataset')!r} at {metrics.get('size')}, not {dataset!r} at {size}"
        )
    return Row(label, kind, path, report_dir, metrics)


def _lookup(m: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = m
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_same_evaluation(rows: Sequence[Row]) -> list[str]:
    """Raise ComparisonError naming two rows evaluated differently; notes on fields a metrics file lacks."""
    notes: list[str] = []
    for key, required in SAME_EVALUATION:
        present = []
        for row in rows:
            found, value = _lookup(row.metrics, key)
            if found:
                present.append((row, value))
            elif required:
                notes.append(
                    f"{row.name}: {row.metrics_file} records no {key}; not checked against the others"
                )
        for row, value in present[1:]:
            first, ref = present[0]
            if value != ref:
                raise ComparisonError(
                    f"rows {first.name!r} and {row.name!r} were evaluated differently ({key}: {ref!r} vs "
                    f"{value!r}; {first.metrics_file}, {row.metrics_file}): re-evaluate them alike"
                )
    for key in SAME_FLOORS:
        present = [(row, row.metrics.get(key)) for row in rows if row.metrics.get(key) is not None]
        for row, value in present[1:]:
            first, ref = present[0]
            if not math.isclose(value, ref, rel_tol=FLOOR_RTOL):
                raise ComparisonError(
                    f"rows {first.name!r} and {row.name!r} have different real-vs-real floors ({key}: {ref:.6g} "
                    f"vs {value:.6g}): the real set or its features changed between the evaluations; re-evaluate"
                )
    return notes


def numbers(m: dict, floor: bool = False) -> dict[str, float | None]:
    """The columns' numbers of one metrics file (its floors when `floor`): value, `_low`/`_high` or `_sd`."""
    out: dict[str, float | None] = {}
    for col in COLUMNS:
        key = col.floor if floor else col.value
        out[col.key] = m.get(key)
        if col.spread == "ci95":
            ci = m.get(f"{key}_ci95") or {}
            out[f"{col.key}_low"], out[f"{col.key}_high"] = ci.get("low"), ci.get("high")
        elif col.spread == "std":
            out[f"{col.key}_sd"] = m.get(f"{key}_std")
    return out


def evaluation_settings(m: dict) -> dict[str, Any]:
    """What every row shares (checked by check_same_evaluation), as the first row's metrics file says."""
    ext, inp, n = m.get("extractor", {}), m.get("input", {}), m.get("n", {})
    return {
        "protocol": m.get("protocol"),
        "extractor": {k: ext.get(k) for k in ("name", "pretrained", "sha256")},
        "window": inp.get("window"),
        "extractor_axes": inp.get("extractor_axes"),
        "reference_set": m.get("reference_set"),
        "n_real_train": n.get("real_train"),
        "n_real_heldout": n.get("real_heldout"),
    }


def comparison_record(dataset: str, size: int, rows: Sequence[Row], notes: list[str]) -> dict:
    """compare.json: the rows' numbers (keyed by name, `order` gives the table order), the floor, settings."""
    return {
        "dataset": dataset,
        "size": size,
        "order": [r.name for r in rows],
        "rows": {
            r.name: {
                "kind": r.kind,
                "metrics_file": str(r.metrics_file),
                "n_generated": r.metrics.get("n", {}).get("generated"),
                **numbers(r.metrics),
            }
            for r in rows
        },
        "floor": numbers(rows[0].metrics, floor=True),
        "evaluation": evaluation_settings(rows[0].metrics),
        "notes": notes,
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _cell(nums: dict, col: Column) -> str:
    text = _fmt(nums.get(col.key))
    if col.spread == "ci95" and nums.get(f"{col.key}_low") is not None:
        text += f" [{_fmt(nums[f'{col.key}_low'])}, {_fmt(nums[f'{col.key}_high'])}]"
    elif col.spread == "std" and nums.get(f"{col.key}_sd") is not None:
        text += f" (sd {_fmt(nums[f'{col.key}_sd'])})"
    return text


TABLE_HEADER = ["row", "kind", *(c.label for c in COLUMNS), "N generated"]


def table_lines(record: dict) -> list[list[str]]:
    """The formatted table: one line per row, then the floor (values with [95% interval] or (sd))."""
    lines = []
    for name in record["order"]:
        nums = record["rows"][name]
        lines.append([name, nums["kind"], *(_cell(nums, c) for c in COLUMNS), _fmt(nums["n_generated"])])
    floor, n = record["floor"], record["evaluation"]["n_real_heldout"]
    lines.append([FLOOR_ROW, "floor", *(_cell(floor, c) for c in COLUMNS), f"{_fmt(n)} held-out"])
    return lines


def csv_rows(record: dict) -> tuple[list[str], list[list]]:
    """table.csv's header and rows: raw numbers, intervals as `<key>_low`/`<key>_high`, sd as `<key>_sd`."""
    keys = list(numbers({}).keys())
    header = ["row", "kind", *keys, "n_generated", "metrics_file"]
    rows = [
        [name, r["kind"], *(r[k] for k in keys), r["n_generated"], r["metrics_file"]]
        for name, r in ((n, record["rows"][n]) for n in record["order"])
    ]
    rows.append([FLOOR_ROW, "floor", *(record["floor"][k] for k in keys), "", ""])
    return header, [["" if v is None else v for v in row] for row in rows]


def markdown(record: dict) -> tuple[str, list[str]]:
    """(title, lines) of table.md: settings, the table, what the floor row is, notes and both figures."""
    ev = record["evaluation"]
    ext = ev["extractor"]
    title = f"PRDiT comparison: {record['dataset']} at {record['size']}^3"
    window = ev["window"] or []
    md = [
        f"# {title}",
        "",
        f"- protocol: {ev['protocol']}; extractor: {ext['name']} (pretrained: {str(ext['pretrained']).lower()})",
        f"- window: {' to '.join(f'{w:g}' for w in window) or 'n/a'} HU; extractor axis order "
        f"{ev['extractor_axes']}",
        f"- reference set: {ev['reference_set']} ({ev['n_real_train']} train, {ev['n_real_heldout']} held-out)",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    md += ["| " + " | ".join(line) + " |" for line in table_lines(record)]
    md += [
        "",
        "Values with [95% bootstrap interval] or (sd). Lower FID/MMD is better; lower MS-SSIM means more "
        "diverse samples; seam ratio 1 = no tiling; texture ratio 1 = the real train texture. " + FLOOR_NOTE,
        "",
    ]
    if record["notes"]:
        md += ["## Notes", ""] + [f"- {n}" for n in record["notes"]] + [""]
    md += ["## FID x10^3", "", "![fid](fid.png)", "", "## Mid-slices", "", "![montage](montage.png)"]
    return title, md


def write_tables(folder: Path, record: dict) -> None:
    """table.md, table.csv and table.html (figures embedded) into `folder`; the PNGs must be there."""
    title, md = markdown(record)
    (folder / "table.md").write_text("\n".join(md) + "\n")
    header, rows = csv_rows(record)
    with open(folder / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    (folder / "table.html").write_text(html_page(title, md, folder))


def draw_fid_chart(record: dict, path: Path) -> None:
    """Bar chart of FID x10^3 per row with its interval as a whisker and the real-vs-real floor as a line."""
    names = record["order"]
    rows = [record["rows"][n] for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 2), 3.6), dpi=100)
    colour = {"baseline": "tab:orange"}
    for i, r in enumerate(rows):
        if r["fid_x1e3"] is None:
            ax.text(i, 0, "n/a", ha="center", va="bottom")
            continue
        ax.bar(i, r["fid_x1e3"], color=colour.get(r["kind"], "tab:blue"), width=0.6, zorder=2)
        if r["fid_x1e3_low"] is not None:
            lo, hi = r["fid_x1e3_low"], r["fid_x1e3_high"]  # percentile bounds: need not surround the bar
            ax.errorbar(
                i, (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", color="k", capsize=4, lw=1, zorder=3
            )
    floor = record["floor"]
    if floor["fid_x1e3"] is not None:
        ax.axhline(floor["fid_x1e3"], color="tab:red", ls="--", lw=1, label="real vs real (floor)")
        if floor["fid_x1e3_low"] is not None:
            ax.axhspan(
                floor["fid_x1e3_low"], floor["fid_x1e3_high"], color="tab:red", alpha=0.12, zorder=0
            )  # behind the bars
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("FID x10^3 (lower is better)")
    ax.set_title(f"{record['dataset']} at {record['size']}^3: FID x10^3 with 95% intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_mid_slices(row: Row, notes: list[str]) -> dict[str, np.ndarray]:
    """The row's mid_slices.npz arrays ({} with a note when the report folder has none)."""
    path = row.report_dir / MID_SLICES
    try:
        with np.load(path) as z:
            return {k: np.asarray(z[k], np.float32) for k in z.files}
    except (OSError, ValueError) as exc:
        notes.append(f"{row.name}: no mid-slices in the montage ({path}: {type(exc).__name__})")
        return {}


def montage_panels(rows: Sequence[Row], notes: list[str]) -> list[tuple[str, list[np.ndarray | None]]]:
    """(label, [axial, coronal, sagittal]) per montage row: real (the first row's), then every row's generated."""
    slices = [read_mid_slices(r, notes) for r in rows]
    real = next((s for s in slices if all(f"real_{v}" in s for v in VIEWS)), {})
    panels = [("real train", [real.get(f"real_{v}") for v in VIEWS])]
    return panels + [
        (f"{r.name}\n({r.kind})", [s.get(f"generated_{v}") for v in VIEWS]) for r, s in zip(rows, slices)
    ]


def panel_origin(row: int, col: int) -> tuple[int, int]:
    """(left, top) pixel of the montage panel at `row`, `col`."""
    return LABEL_W + col * (CELL + GAP), HEADER_H + row * (CELL + GAP)


def montage_size(rows: int) -> tuple[int, int]:
    """(width, height) of a montage of `rows` rows of the three views."""
    return LABEL_W + len(VIEWS) * (CELL + GAP) - GAP, HEADER_H + rows * (CELL + GAP) - GAP


def draw_montage(
    panels: Sequence[tuple[str, Sequence[np.ndarray | None]]], window: Sequence[float], path: Path
) -> None:
    """A PNG grid: one labelled row per panel set, axial | coronal | sagittal, all at the HU window's grey scale."""
    lo, hi = float(window[0]), float(window[1])
    canvas = Image.new("L", montage_size(len(panels)), color=0)
    draw = ImageDraw.Draw(canvas)
    for c, view in enumerate(VIEWS):
        draw.text((panel_origin(0, c)[0] + 4, 3), view, fill=255)
    for r, (label, views) in enumerate(panels):
        lines = [line[:LABEL_CHARS] for line in label.split("\n")]  # the name, then its kind
        for i, line in enumerate(lines):
            draw.text((4, panel_origin(r, 0)[1] + CELL // 2 - 6 * len(lines) + 12 * i), line, fill=255)
        for c, img in enumerate(views):
            left, top = panel_origin(r, c)
            if img is None:
                draw.rectangle((left, top, left + CELL - 1, top + CELL - 1), fill=40)
                draw.text((left + 6, top + CELL // 2 - 6), "no mid-slice", fill=200)
            else:
                canvas.paste(to_grey(img, lo, hi, CELL), (left, top))
    draw.text((4, canvas.height - 14), f"{lo:g}..{hi:g} HU", fill=255)
    canvas.save(path, format="PNG")


def write_comparison(
    folder: Path, dataset: str, size: int, rows: Sequence[Row], notes: list[str], window: Sequence[float]
) -> dict:
    """Write every output into `folder` atomically; returns the compare.json record."""
    with atomic_dir(folder) as tmp:
        panels = montage_panels(rows, notes)  # notes missing mid-slices before the record is built
        record = comparison_record(dataset, size, rows, notes)
        window = record["evaluation"]["window"] or window
        draw_montage(panels, window, tmp / "montage.png")
        draw_fid_chart(record, tmp / "fid.png")
        write_tables(tmp, record)
        write_json(tmp / "compare.json", record)
    return record
