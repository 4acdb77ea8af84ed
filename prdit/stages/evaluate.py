"""`prdit evaluate`: the metrics and report of our samples (the project's or an experiment's) or of a
baseline's volumes at one dataset and size, logged as one MLflow run. The evaluation (prdit.evaluate.run)
takes explicit arguments; this stage resolves them: the files from prdit.paths, the settings from the
parameters and their resolved protocol conventions (Params.conventions)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prdit import paths, precision, tracking
from prdit.device import announce, describe_device, select_device
from prdit.errors import PrditError
from prdit.evaluate.baselines import baseline_set
from prdit.evaluate.features import SPLITS
from prdit.evaluate.run import EvalSettings, evaluate
from prdit.evaluate.volumes import EvalInputs, GeneratedSet, samples_set
from prdit.protocol import Conventions

if TYPE_CHECKING:
    from prdit.config import Params


class BaselineMismatch(PrditError, ValueError):
    """`prdit evaluate` asked for a baseline that is not declared, or not for this dataset and size."""


def numeric(m: dict, prefix: str = "") -> dict[str, float]:
    """Flat numeric view of the metrics for MLflow (nested keys dotted; intervals keep low and high)."""
    out: dict[str, float] = {}
    for k, v in m.items():
        if isinstance(v, bool) or v is None or (prefix.endswith("_ci95.") and k not in ("low", "high")):
            continue
        if isinstance(v, (int, float)):
            out[prefix + k] = float(v)
        elif isinstance(v, dict) and k not in ("extractor", "input", "generated"):
            out.update(numeric(v, f"{prefix}{k}."))
    return out


def generated_set(p: Params, dataset: str, size: int, baseline: str | None = None) -> GeneratedSet:
    """What `prdit evaluate` scores: baseline `baseline`'s folder (declared for this dataset and size), else
    the samples of p's experiment (p.exp_name; None: the project's own samples)."""
    window, n = tuple(p.preprocess.window), p.evaluate.num_samples
    if baseline is None:
        folder = paths.samples(dataset, size, name=p.exp_name)
        kind = "samples" if p.exp_name is None else "experiment"
        source = {"kind": kind, "name": p.exp_name, "path": str(folder), "values": "hu"}
        return samples_set(folder, size, window, n, source)
    if baseline not in p.baselines:
        declared = ", ".join(sorted(p.baselines)) or "none"
        raise BaselineMismatch(f"baselines.{baseline}: not declared in params.yaml (declared: {declared})")
    b = p.baselines[baseline]
    if (b.dataset, int(b.size)) != (dataset, int(size)):
        raise BaselineMismatch(
            f"baselines.{baseline}: declared for {b.dataset}/{b.size}, asked to evaluate it on {dataset}/{size}"
        )
    return baseline_set(baseline, b.path, size, b.values, window, b.axes, b.flip, n)


def protocol_fields(conventions: Conventions) -> dict:
    """EvalSettings' protocol fields from the resolved conventions: the protocol's name (a label), the
    extractor's axis order, the real set (the paper's first real_set_n of train + val, else train) and
    which generated pairs MS-SSIM scores."""
    return {
        "protocol": conventions.name,
        "extractor_axes": conventions.extractor_axes,
        "real_set_n": conventions.real_set_n,
        "all_generated_pairs": conventions.all_generated_pairs,
    }


def settings(p: Params) -> EvalSettings:
    """How p evaluates: evaluate.*, preprocess.window and what p.conventions decide."""
    ev = p.evaluate
    return EvalSettings(
        window=tuple(p.preprocess.window),
        ms_ssim_pairs=ev.ms_ssim_pairs,
        bootstrap=ev.bootstrap,
        seed=ev.seed,
        weights=ev.weights,
        sha256=ev.sha256,
        num_samples=ev.num_samples,
        **protocol_fields(p.conventions),
    )


def inputs(dataset: str, size: int, exp_name: str | None = None) -> EvalInputs:
    """The files an evaluation of `dataset` at `size` reads, where the layout keeps them: the real cubes,
    the split files, the real-feature cache and the samples of experiment `exp_name` (None: the project's)."""
    return EvalInputs(
        real=paths.processed(dataset, size),
        splits={split: paths.splits(dataset, split) for split in SPLITS},
        feature_cache=paths.feature_cache(dataset, size),
        samples=paths.samples(dataset, size, name=exp_name),
    )


def run(p: Params, dataset: str, size: int, baseline: str | None = None) -> None:
    """Stage function of `prdit evaluate`: one MLflow run logging the metrics, the report and its pictures.

    `baseline` None: p's samples (the experiment p is the view of, or the project's own), written to
    metrics/reports under p.exp_name; else that baseline's volumes, written under the baseline's name.
    """
    gen = generated_set(p, dataset, size, baseline)  # a wrong baseline declaration stops here
    name = baseline if baseline is not None else p.exp_name
    device, why = select_device()  # a requested but unusable GPU stops here, before any file is touched
    numerics = precision.evaluation()
    precision.set_backends(numerics, device)
    used = {
        "evaluate": p.section("evaluate"),
        "preprocess.window": list(p.preprocess.window),
        "protocol": p.protocol,
        **({"baseline": {**gen.source, "n_files": len(gen.paths)}} if baseline is not None else {}),
    }
    with tracking.stage_run(p, stage="evaluate", dataset=dataset, size=size, used=used) as run:
        announce(run, describe_device(device, why, numerics))
        for split in ("train", "val", "test"):  # the real reference and floor sets
            tracking.log_split(run, p, dataset, size, split, "evaluation")
        run.log_dataset(gen.source["path"], Path(gen.source["path"]), gen.source["kind"])
        m, metrics_path, report_dir = evaluate(
            dataset,
            size,
            settings(p),
            inputs(dataset, size, p.exp_name),
            metrics_path=paths.metrics(dataset, size, name),
            report_dir=paths.reports(dataset, size, name),
            device=device,
            generated=gen,
        )
        run.set_tags(
            {
                "prdit.protocol": m["protocol"],
                "prdit.extractor": m["extractor"]["name"],
                "prdit.extractor_pretrained": str(m["extractor"]["pretrained"]).lower(),
                "prdit.generated": m["generated"]["kind"],
                **({"prdit.generated_name": name} if name is not None else {}),
            }
        )
        run.log_metrics(numeric(m))
        run.log_artifact(metrics_path, artifact_path="metrics")
        for f in sorted(report_dir.iterdir()):
            if f.suffix == ".png":
                run.log_image(f, artifact_path="report")
            else:
                run.log_artifact(f, artifact_path="report")
