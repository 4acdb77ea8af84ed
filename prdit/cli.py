"""`prdit <command>`: parse arguments, load and validate params, call one function. No logic here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prdit import paths
from prdit.config import STAGES, ConfigError, Params, load
from prdit.errors import PrditError, describe


def _common(
    sub: argparse.ArgumentParser,
    dataset: bool = True,
    size: bool = False,
    threads: bool = False,
    experiment: bool = False,
) -> None:
    sub.add_argument(
        "--params",
        action="append",
        metavar="YAML",
        help="parameter file(s), later ones override earlier ones (default: $PRDIT_PARAM_FILES, else params.yaml)",
    )
    if dataset:
        sub.add_argument("--dataset", required=True, help="dataset name from params.yaml `datasets`")
    if size:
        sub.add_argument("--size", type=int, required=True, help="working size (edge length in voxels)")
    if experiment:
        sub.add_argument(
            "--experiment",
            default=None,
            metavar="NAME",
            help="a name under params `experiments` (default: the project's own parameters)",
        )
    if threads:
        sub.add_argument("--threads", type=int, default=1, help="worker processes for the per-case pool")
        sub.add_argument(
            "--strict", action="store_true", help="exit non-zero if any case fails, not only if all do"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prdit", description="PRDiT pipeline: raw chest CT to generated volumes and metrics."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="project folder (params.yaml, Snakefile) to work in (default: $PRDIT_ROOT, else the current one)",
    )
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(subs)
    _model_commands(subs)
    _tool_commands(subs)
    return parser


def _shard(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--shard", type=int, default=None, metavar="K", help=what)


def _data_commands(subs: Any) -> None:
    """phantom, download, ingest, preprocess, split."""
    p = subs.add_parser("phantom", help="write the synthetic chest-CT DICOM dataset")
    _common(p, dataset=False)
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per patient)")

    p = subs.add_parser(
        "download", help="download a public dataset (lidc-idri, rad-chestct) into its sources path"
    )
    _common(p)
    p.add_argument("--patients", nargs="*", default=None, help="only these patient ids")
    p.add_argument("--limit", type=int, default=None, help="at most this many series/files")
    p.add_argument("--threads", type=int, default=None, help="parallel downloads (default: params)")
    p.add_argument(
        "--manifest", type=Path, default=None, help="lidc-idri: only the series of this TCIA .tcia manifest"
    )

    p = subs.add_parser("ingest", help="DICOM series / npz / NIfTI -> HU NIfTI volumes + qc.csv")
    _common(p, threads=True)
    _shard(p, "compute only shard K of ingest.shards into the per-case cache (then run without it)")
    p.add_argument(
        "--plan", type=Path, default=None, help="the cases as found by --write-plan (no new discovery)"
    )
    p.add_argument(
        "--write-plan", type=Path, default=None, metavar="JSON", help="only discover the cases, into JSON"
    )
    p = subs.add_parser("preprocess", help="window, resample, crop and resize to every working size")
    _common(p, threads=True)
    _shard(p, "compute only shard K of preprocess.shards into the per-case cache (then run without it)")
    p = subs.add_parser("split", help="patient-level train/val/test split")
    _common(p)


def _model_commands(subs: Any) -> None:
    """train, launch, sample, merge-samples, evaluate, compare."""
    p = subs.add_parser("train", help="train one stage (local, global, highres)")
    _common(p, experiment=True)
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument(
        "--key",
        default=None,
        help="the model folder's key (models/D/STAGE-KEY, as the rules name it): the experiment that has it",
    )

    p = subs.add_parser(
        "launch", help="run a training command with torchrun on this machine or on N SLURM nodes"
    )
    p.add_argument(
        "--nodes", type=int, default=1, help="nodes (several: one torchrun per node, started by srun)"
    )
    p.add_argument(
        "--gpus", type=int, default=1, help="GPUs of the job (processes; on SLURM: as allocated per node)"
    )
    p.add_argument("--cpus", type=int, default=1, help="CPUs per node for the srun step (the rule's threads)")
    p.add_argument("--node-task", action="store_true", help=argparse.SUPPRESS)  # inside the srun step
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command, e.g. prdit train ...")

    p = subs.add_parser("sample", help="generate volumes with the predictor-corrector sampler")
    _common(p, size=True, experiment=True)
    _shard(p, "draw only shard K of sample.shards (into samples/D/S.shards/K; join with merge-samples)")
    p = subs.add_parser("merge-samples", help="join the shards of `prdit sample --shard` into samples/D/S")
    _common(p, size=True, experiment=True)
    p = subs.add_parser(
        "evaluate", help="FID, MMD and MS-SSIM of generated volumes, with floors and a report"
    )
    _common(p, size=True, experiment=True)
    p.add_argument(
        "--baseline", default=None, metavar="NAME", help="evaluate params `baselines.NAME` instead of samples"
    )
    p = subs.add_parser(
        "compare", help="one table, chart and montage grid of every experiment and baseline at a size"
    )
    _common(p, size=True)


def _tool_commands(subs: Any) -> None:
    """fetch-weights, plan, ui-url, tracking-import, dvc-yaml."""
    p = subs.add_parser("fetch-weights", help="download the MedicalNet ResNet-50 weights (checksum verified)")
    _common(p, dataset=False)
    p.add_argument("--out", type=Path, default=None, help="where to write (default: evaluate.weights)")

    p = subs.add_parser("plan", help="FLOPs, GPU memory and hours of every GPU job, against its limits")
    _common(p, dataset=False)
    p.add_argument("--gpu", default="h100", help="h100, h100-pcie, h200 or a100 (default h100)")
    p.add_argument("--json", action="store_true", help="a JSON list of jobs instead of the table")

    p = subs.add_parser("ui-url", help="the MLflow UI page to open: the experiment's training runs")
    _common(p, dataset=False)
    p.add_argument("--port", type=int, default=5000, help="the port `mlflow ui` serves on")

    p = subs.add_parser("tracking-import", help="replay a tracking spool file into MLflow")
    _common(p, dataset=False)
    p.add_argument("spool", type=Path)

    p = subs.add_parser("dvc-yaml", help="write dvc.yaml from params.yaml (experiments, baselines)")
    _common(p, dataset=False)
    p.add_argument(
        "--check", action="store_true", help="only exit 1 when dvc.yaml differs from what it would write"
    )


PATH_ARGS = ("out", "spool", "plan", "write_plan")


def _enter_root(args: argparse.Namespace) -> None:
    """Check the project root and work there; paths given on the command line stay relative to here."""
    root = paths.project_root(args.root)
    here = Path.cwd()
    args.params = [here / p for p in args.params] if args.params else None
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, Path):
            setattr(args, name, here / value)
    os.chdir(root)


def param_files(args: argparse.Namespace) -> list[str | Path]:
    """--params, else the files Snakemake merged (PRDIT_PARAM_FILES, set by workflow/rules/common.smk, relative
    to the project root), else params.yaml (what DVC stages and a user at the shell get)."""
    if args.params:
        return args.params
    from_env = os.environ.get("PRDIT_PARAM_FILES")
    return from_env.split(os.pathsep) if from_env else ["params.yaml"]


def dvc_dataset(value: str) -> str:
    """The dataset of `--dataset "$DVC_STAGE"` (dvc.yaml: DVC sets DVC_STAGE to `<stage>@<dataset>`, so the
    name reaches prdit through the environment and never through the shell's parser); else `value`."""
    stage = os.environ.get("DVC_STAGE")
    return value.split("@", 1)[1] if stage and value == stage and "@" in value else value


def _params(args: argparse.Namespace) -> Params:
    """The parameters of this command: the files merged and validated, the dataset checked, and the view of
    `--experiment` (or of the experiment whose model `--key` names)."""
    params = load(param_files(args))
    if os.environ.get("DVC_STAGE") and args.command != "dvc-yaml":
        from prdit.dvc_yaml import check_under_dvc  # run by `dvc repro`: a stale dvc.yaml names other models

        check_under_dvc(params)
    if getattr(args, "dataset", None) is not None:
        args.dataset = dvc_dataset(args.dataset)
        if args.dataset not in params.sources:
            known = ", ".join(params.sources)
            raise ConfigError(f"--dataset {args.dataset!r}: not under 'sources' (known: {known})")
    if getattr(args, "key", None) is not None:
        if args.experiment is not None:
            raise ConfigError("--key and --experiment: give one (the key names the experiment's model)")
        return params.for_model(args.stage, args.key)
    if getattr(args, "experiment", None) is not None:
        return params.view(args.experiment)
    return params


def _phantom(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import phantom

    return phantom.run(params, args.out)


def _download(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import download

    options = {k: getattr(args, k) for k in ("patients", "limit", "threads", "manifest")}
    return download.run(params, args.dataset, **options)


def _ingest(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import ingest

    if args.write_plan:
        return ingest.write_plan(params, args.dataset, args.write_plan, threads=args.threads)
    return ingest.run(
        params, args.dataset, threads=args.threads, strict=args.strict, shard=args.shard, plan_file=args.plan
    )


def _preprocess(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import preprocess

    return preprocess.run(params, args.dataset, threads=args.threads, strict=args.strict, shard=args.shard)


def _split(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import split

    return split.run(params, args.dataset)


def _train(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import train

    return train.run(params, args.dataset, args.stage)


def _sample(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import sample

    return sample.run(params, args.dataset, args.size, shard=args.shard)


def _merge_samples(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import merge_samples

    return merge_samples.run(params, args.dataset, args.size)


def _evaluate(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import evaluate

    if args.baseline is None:
        return evaluate.run(params, args.dataset, args.size)
    if args.experiment is not None:
        raise ConfigError("--baseline and --experiment: give one")
    if args.baseline not in params.baselines:
        known = ", ".join(params.baselines) or "none"
        raise ConfigError(f"--baseline {args.baseline!r}: not under 'baselines' (known: {known})")
    return evaluate.run(params, args.dataset, args.size, baseline=args.baseline)


def _compare(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import compare

    return compare.run(params, args.dataset, args.size)


def _fetch_weights(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import fetch_weights

    return fetch_weights.run(params, args.out)


def _plan(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import plan

    return plan.run(params, args.gpu, as_json=args.json)


def _ui_url(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.tracking import ui_url

    print(ui_url(params, port=args.port))
    return 0


def _tracking_import(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.tracking import import_spool

    print(f"replayed {import_spool(args.spool, params.tracking_uri)} events from {args.spool}")
    return 0


def _dvc_yaml(args: argparse.Namespace, params: Params) -> int | None:
    from prdit.stages import dvc_yaml

    return dvc_yaml.run(params, check=args.check)


# `prdit <command>` -> the function that runs it (each imports its stage only when called)
COMMANDS: dict[str, Callable[[argparse.Namespace, Params], int | None]] = {
    "phantom": _phantom,
    "download": _download,
    "ingest": _ingest,
    "preprocess": _preprocess,
    "split": _split,
    "train": _train,
    "sample": _sample,
    "merge-samples": _merge_samples,
    "evaluate": _evaluate,
    "compare": _compare,
    "fetch-weights": _fetch_weights,
    "plan": _plan,
    "ui-url": _ui_url,
    "tracking-import": _tracking_import,
    "dvc-yaml": _dvc_yaml,
}


def _run(args: argparse.Namespace) -> int | None:
    if args.command == "launch":  # reads no parameters and no project files: it only starts the command
        from prdit.train.launch import run_launch

        argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return run_launch(args.nodes, args.gpus, argv, node_task=args.node_task, cpus=args.cpus)
    _enter_root(args)
    return COMMANDS[args.command](args, _params(args))


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error is one line on stderr (the traceback too under --verbose)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        status = _run(args)
    except ConfigError as exc:
        _traceback(args)
        print(f"prdit: invalid parameters: {exc}", file=sys.stderr)
        return 2
    except PrditError as exc:
        _traceback(args)
        print(f"prdit {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _traceback(args)
        print(f"prdit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one top-level handler: one line, traceback under --verbose
        _traceback(args)
        hint = "" if args.verbose else " (run with --verbose for the traceback)"
        print(f"prdit {args.command}: {describe(exc)}{hint}", file=sys.stderr)
        return 1
    return int(status or 0)


def _traceback(args: argparse.Namespace) -> None:
    if args.verbose:
        import traceback

        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
