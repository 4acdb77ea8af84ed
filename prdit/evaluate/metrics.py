"""The headline metrics, each declared once: read by the scorer (scaled keys), the report table and the docs.

Modelled on NVlabs/edm's fid.py: one place says what a metric is called, where its floor lives, how it is
scaled and what it means. `python -m prdit.evaluate.metrics` prints the rows of the metrics table in
prdit/evaluate/README.md (a test checks that the README holds them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One row of the report's metric table and of the docs' metrics table."""

    key: str  # the metrics file's key of the generated-vs-train value
    label: str  # the report table's row label
    floor: str | None  # key of the real held-out vs train value it is read against
    doc: str  # the docs' meaning column
    spread: str | None = "ci95"  # 'ci95': `<key>_ci95` interval; 'std': `<key>_std`; None: none
    floor_spread: str | None = "ci95"  # the same for the floor key
    scale_of: str | None = None  # the metric is `scale_of`'s value (and interval) times `scale`
    scale: float = 1.0
    docs_keys: tuple[str, ...] = ()  # further keys the docs row covers


METRICS: tuple[Metric, ...] = (
    Metric(
        "fid",
        "FID (raw, float64)",
        "fid_floor",
        "Fréchet distance of generated vs real **train** features, float64",
    ),
    Metric(
        "fid_x1e3",
        "FID x10^3 (paper scale)",
        "fid_floor_x1e3",
        "`fid` x10^3, the scale the paper reports",
        scale_of="fid",
        scale=1e3,
    ),
    Metric(
        "mmd_reference",
        "MMD reference (paper definition, sqrt of V-statistic)",
        "mmd_reference_floor",
        "the paper's MMD: RBF, gamma = 1/(2 median of all N^2 squared train distances, torch.median's "
        "lower middle), V-statistic, sqrt(max(MMD^2, 0)); `mmd2_reference` is the MMD^2 before the sqrt",
        docs_keys=("mmd2_reference",),
    ),
    Metric(
        "mmd_unbiased",
        "MMD^2 unbiased (U-statistic, same bandwidth)",
        "mmd_unbiased_floor",
        "U-statistic **MMD^2** with the same gamma (may be < 0)",
    ),
    Metric(
        "fid_at_floor_n",
        "FID at the floor's N (generated subsampled to the held-out count)",
        "fid_floor",
        "mean FID of generated subsets of the held-out size (FID depends on N; compare this with `fid_floor`)",
        spread=None,
    ),
    Metric(
        "ms_ssim",
        "MS-SSIM between samples (diversity; floor = real train pairs)",
        "ms_ssim_floor",
        "3D MS-SSIM over `evaluate.ms_ssim_pairs` random pairs of generated volumes (protocol paper: all "
        "pairs), with its sd (diversity; lower = more diverse); the floor: the same over real train pairs; "
        "`ms_ssim_scales` = scales used (4 at 32^3, else 5)",
        spread="std",
        floor_spread="std",
        docs_keys=("ms_ssim_std", "ms_ssim_floor", "ms_ssim_floor_std", "ms_ssim_scales"),
    ),
)


def scaled(values: dict, suffix: str = "") -> dict:
    """The scaled metrics (and their intervals) of `values`, for the given floor `suffix` ('' or '_floor')."""
    out: dict = {}
    for m in METRICS:
        if m.scale_of is None:
            continue
        v = values.get(m.scale_of + suffix)
        ci = values.get(m.scale_of + suffix + "_ci95")
        key = m.scale_of + suffix + m.key.removeprefix(m.scale_of)
        out[key] = None if v is None else v * m.scale
        out[key + "_ci95"] = (
            None if not ci else {**ci, "low": ci["low"] * m.scale, "high": ci["high"] * m.scale}
        )
    return out


def docs_rows() -> list[str]:
    """The docs' metrics-table rows of METRICS: `| keys | meaning |`."""
    return ["| " + ", ".join(f"`{k}`" for k in (m.key, *m.docs_keys)) + f" | {m.doc} |" for m in METRICS]


if __name__ == "__main__":
    print("\n".join(docs_rows()))
