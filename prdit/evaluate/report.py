"""The evaluation report: metric table with floors and intervals, montages, HU histograms, memorization.

Writes report.md (PNG links), report.html (PNGs embedded, self-contained) and CSVs that DVC plots read
(hu_histogram.csv, memorization.csv, metrics_table.csv, diagnostics_table.csv) into one folder.
"""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from prdit.evaluate.metrics import METRICS  # noqa: E402
from prdit.viz import montage  # noqa: E402


def _fmt(v: object, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def _ci(ci: dict | None) -> str:
    return "n/a" if not ci else f"[{_fmt(ci['low'])}, {_fmt(ci['high'])}]"


def _spread(m: dict, key: str, spread: str | None) -> str:
    if spread == "ci95":
        return _ci(m.get(key + "_ci95"))
    return f"sd {_fmt(m.get(key + '_std'))}" if spread == "std" else "n/a"


def table_rows(m: dict) -> list[list[str]]:
    """Metric | generated vs train | 95% CI | floor: held-out real vs train | 95% CI (one row per METRICS)."""
    return [
        [
            metric.label,
            _fmt(m.get(metric.key)),
            _spread(m, metric.key, metric.spread),
            _fmt(m.get(metric.floor)) if metric.floor else "n/a",
            _spread(m, metric.floor, metric.floor_spread) if metric.floor else "n/a",
        ]
        for metric in METRICS
    ]


HEADER = ["metric", "generated vs train", "95% CI", "floor: held-out real vs train", "floor 95% CI"]
DIAG_HEADER = ["diagnostic", "generated", "real train (FID reference set)", "real held-out"]


def diagnostic_rows(m: dict) -> list[list[str]]:
    """Seam ratio and texture of each set (the metrics file's seam_* and texture_* keys)."""
    stride = m.get("seam_stride", 8)
    return [
        [
            f"Seam ratio at the {stride}-voxel token grid (1 = no tiling)",
            _fmt(m.get("seam_ratio")),
            _fmt(m.get("seam_ratio_real")),
            _fmt(m.get("seam_ratio_heldout")),
        ],
        [
            "Texture: mean abs second difference",
            _fmt(m.get("texture_generated")),
            _fmt(m.get("texture_real")),
            _fmt(m.get("texture_heldout")),
        ],
        [
            "Texture ratio vs real train (above 1: noise, below 1: over-smoothing)",
            _fmt(m.get("texture_ratio")),
            _fmt(1.0 if m.get("texture_real") else None),
            _fmt(m.get("texture_ratio_floor")),
        ],
    ]


def _hist_plot(edges: np.ndarray, real: np.ndarray, gen: np.ndarray, path: Path) -> None:
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.step(centres, real, where="mid", label="real (train)")
    ax.step(centres, gen, where="mid", label="generated")
    ax.set_yscale("log")
    ax.set_xlabel("HU")
    ax.set_ylabel("fraction of voxels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _memo_plot(memo: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(7, 3), dpi=100)
    for ax, key, title in (
        (axes[0], "feature_dist", "feature space"),
        (axes[1], "voxel_rmse", "voxel RMSE (<=32^3)"),
    ):
        for k, (_name, rows) in enumerate(
            (("held-out real", memo["heldout"]), ("generated", memo["generated"]))
        ):
            vals = [r[key] for r in rows]
            ax.scatter(np.full(len(vals), k) + np.linspace(-0.1, 0.1, len(vals)), vals, s=14)
        if key == "voxel_rmse" and memo.get("threshold_voxel_rmse") is not None:
            ax.axhline(memo["threshold_voxel_rmse"], color="red", lw=1, ls="--", label="near-copy threshold")
            ax.legend(fontsize=7)
        ax.set_xticks([0, 1], ["held-out real", "generated"])
        ax.set_title(f"distance to nearest train volume\n({title})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@dataclass(frozen=True)
class Histograms:
    """The report's HU histograms: bin edges (HU) and the mean voxel fraction per bin of each set."""

    edges: np.ndarray  # (bins + 1,) HU
    real: np.ndarray  # (bins,) real train
    generated: np.ndarray  # (bins,) generated


Montages = dict[str, tuple[list[np.ndarray], list[str]]]  # 'real', 'generated': (volumes, row titles)


MEMO_HEADER = ["set", "id", "feature_nn", "feature_dist", "voxel_nn", "voxel_rmse", "voxel_ssim", "near_copy"]


def write_report(
    folder: Path, m: dict, montages: Montages, hists: Histograms, memo: dict, info_lines: list[str]
) -> list[Path]:
    """Write figures, CSVs, report.md and report.html into `folder`; returns the PNG paths."""
    pngs = _figures(folder, montages, hists, memo)
    centres = (hists.edges[:-1] + hists.edges[1:]) / 2
    _write_csv(
        folder / "hu_histogram.csv",
        ["hu", "real", "generated"],
        [[float(c), float(r), float(g)] for c, r, g in zip(centres, hists.real, hists.generated)],
    )
    memo_rows = [
        [kind] + [r[k] for k in MEMO_HEADER[1:-1]] + [r.get("near_copy", "")]
        for kind, rows in (("generated", memo["generated"]), ("heldout", memo["heldout"]))
        for r in rows
    ]
    _write_csv(folder / "memorization.csv", MEMO_HEADER, memo_rows)
    rows, diag = table_rows(m), diagnostic_rows(m)
    _write_csv(folder / "metrics_table.csv", HEADER, rows)
    _write_csv(folder / "diagnostics_table.csv", DIAG_HEADER, diag)

    title = f"PRDiT evaluation: {m['dataset']} at {m['size']}^3"
    md = [f"# {title}", ""] + [f"- {line}" for line in info_lines] + [""]
    md += _metrics_section(m, rows, diag)
    md += [
        "## Real vs generated",
        "",
        "Axial, coronal and sagittal mid-slices, window "
        f"{m['input']['window'][0]:g} to {m['input']['window'][1]:g} HU.",
        "",
    ]
    md += [f"![{p.stem}]({p.name})" for p in pngs if p.stem.startswith("montage")]
    md += ["", "## HU histograms", "", "![hu_histogram](hu_histogram.png)", "", "## Memorization audit", ""]
    md += _audit_section(m, memo_rows)
    if m["skipped"]:
        md += ["", "## Skipped inputs", ""] + [f"- {s}" for s in m["skipped"]]
    (folder / "report.md").write_text("\n".join(md) + "\n")
    (folder / "report.html").write_text(html_page(title, md, folder))
    return pngs


def _figures(folder: Path, montages: Montages, hists: Histograms, memo: dict) -> list[Path]:
    """montage_real.png, montage_generated.png (where there are volumes), hu_histogram.png and, with an
    audit, memorization.png."""
    (real_vols, real_titles), (gen_vols, gen_titles) = montages["real"], montages["generated"]
    pngs = []
    if real_vols:
        pngs.append(montage(real_vols, folder / "montage_real.png", titles=real_titles))
    if gen_vols:
        pngs.append(montage(gen_vols, folder / "montage_generated.png", titles=gen_titles))
    _hist_plot(hists.edges, hists.real, hists.generated, folder / "hu_histogram.png")
    pngs.append(folder / "hu_histogram.png")
    if memo["generated"] or memo["heldout"]:
        _memo_plot(memo, folder / "memorization.png")
        pngs.append(folder / "memorization.png")
    return pngs


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _metrics_section(m: dict, rows: list[list[str]], diag: list[list[str]]) -> list[str]:
    """report.md's metrics and tiling / texture tables with what they mean, and the caveats."""
    md = ["## Metrics", ""] + _md_table(HEADER, rows)
    md += [
        "",
        "FID is shown raw and x10^3 (the paper's tables use x10^3). Lower FID/MMD is better; a score near its "
        "floor is as close to the training set as unseen real scans are. Lower MS-SSIM means more diverse samples.",
        "",
        "## Tiling and texture",
        "",
    ]
    md += _md_table(DIAG_HEADER, diag)
    md += [
        "",
        "Seam ratio: mean absolute voxel step across the model's patch-token boundaries (every "
        f"{m.get('seam_stride', 8)} voxels, where un-patchified cells meet) over the mean step elsewhere, along all "
        "three axes on [-1, 1] volumes; a generated value above the real one means visible tiling. Texture ratio: "
        "mean absolute second difference of a set over the real train set's; held-out real gives the floor.",
        "",
    ]
    if m["notes"]:
        md += ["## Caveats", ""] + [f"- {n}" for n in m["notes"]] + [""]
    return md


def _audit_section(m: dict, memo_rows: list[list]) -> list[str]:
    """report.md's memorisation audit: the near-copy rule, its count, the median ratios and the table."""
    mem = m["memorization"]
    rule = f"SSIM to the nearest training volume >= {mem['near_copy_ssim']}"
    if mem["threshold_voxel_rmse"] is not None:
        rule += (
            f" and voxel RMSE below {mem['near_copy_ratio']} x the smallest held-out value "
            f"({_fmt(mem['threshold_voxel_rmse'])})"
        )
    md = [
        f"Near-copy rule: {rule}. Near-copies: **{len(mem['near_copies'])} of {m['n']['generated']}** "
        f"({', '.join(mem['near_copies']) or 'none'}). Median nearest-train distance, generated / held-out: "
        f"feature {_fmt(mem['median_ratio_feature'])}, voxel {_fmt(mem['median_ratio_voxel'])} "
        "(well below 1 suggests copying). Voxel space: volumes average-pooled to at most 32^3.",
        "",
    ]
    if memo_rows:
        md += ["![memorization](memorization.png)", ""]
        md += _md_table(MEMO_HEADER, [[_fmt(v) for v in r] for r in memo_rows])
    return md


def _html_table_row(line: str, first: bool) -> str | None:
    """A Markdown table line as HTML: the first opens the table as its header; a |---| rule gives None."""
    cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
    if first:
        return "<table><tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>"
    if set(line) <= set("|-"):
        return None
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _html_block(line: str, folder: Path) -> str | None:
    """A Markdown line that is neither a table row nor a list item as HTML (an image inlined from
    `folder`, a heading, a paragraph); a blank line gives None."""
    if line.startswith("!["):
        name = line[line.index("(") + 1 : -1]
        data = base64.b64encode((folder / name).read_bytes()).decode()
        return f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></p>'
    if line.startswith("#"):
        level = len(line) - len(line.lstrip("#"))
        return f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>"
    return f"<p>{html.escape(line).replace('**', '')}</p>" if line else None


def html_page(title: str, md: list[str], folder: Path) -> str:
    """A small, self-contained HTML rendering of the Markdown lines (images inlined as base64)."""
    body, in_table, in_list = [], False, False
    for line in md:
        if line.startswith("|"):
            row = _html_table_row(line, first=not in_table)
            if row is not None:
                body.append(row)
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            body.append(("" if in_list else "<ul>") + f"<li>{html.escape(line[2:])}</li>")
            in_list = True
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        block = _html_block(line, folder)
        if block is not None:
            body.append(block)
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
