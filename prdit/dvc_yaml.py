"""dvc.yaml, written from prdit.topology and params.yaml (`prdit dvc-yaml`): the Snakefile's DAG for DVC.

A static dvc.yaml cannot compute the lineage keys of experiments' model folders (Params.model_key), so the
file is generated. Without `experiments:` and `baselines:` the output does not depend on any parameter value:
stages loop over `${datasets}` and interpolate `${preprocess.size}`, so it keeps working when a user copies a
config's values into params.yaml (it lists the stage-3 stages whatever highres_size says). With either
section it names each experiment's samples, evaluations and the models of distinct lineage keys
(`train-global-<key>`, `sample-base-<E>`, `evaluate-highres-<B>`, `compare-base`), and must be regenerated
when those sections or the values a key hashes change (`prdit dvc-yaml --check` says whether it is current).

Each stage lists exactly the params it reads: prdit.config.STAGE_PARAMS, plus the keys under
`experiments.<E>` that exist and override what the stage reads (DVC refuses a listed key that params.yaml
lacks). tests/workflow/test_parity.py checks the result against Snakemake's jobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prdit import io, paths, topology
from prdit.config import STAGE_PARAMS, Params
from prdit.errors import PrditError
from prdit.plan import limits

FILE = Path("dvc.yaml")
STALE = "dvc.yaml is out of date with params.yaml (experiments/baselines); run `prdit dvc-yaml`"
DATA_THREADS = limits.DATA_JOBS["ingest"]["threads"]  # the ingest and preprocess rules' threads
ITEM = "${item}"
SPLITS = [str(paths.splits(ITEM, part)) for part in ("train", "val", "test")]
LABEL = {"size": "base", "highres_size": "highres"}  # stage-name word of each working size (topology)

HEADER = """\
# The same DAG as the Snakefile, for `dvc repro`: same prdit commands, same params.yaml, same files.
# Written by `prdit dvc-yaml` from prdit/topology.py and params.yaml: do not edit; run it again after
# changing `experiments:` or `baselines:` (prdit/dvc_yaml.py). Each stage lists exactly the params it reads
# (prdit/config.py STAGE_PARAMS); tests/workflow/test_parity.py checks that this file and the Snakefile agree.
"""


class StaleError(PrditError):
    """dvc.yaml is not what params.yaml gives."""


@dataclass(frozen=True)
class Note:
    """A scalar written with a trailing `# comment`."""

    value: Any
    comment: str


class Flow(list):
    """A list written inline: [a, b]."""


# ------------------------------------------------------------------------------------------- the stages
def _size(size_key: str) -> str:
    return "${preprocess." + size_key + "}"


def _size_key(p: Params, size: int) -> str:
    """The preprocess key of working size `size` (a baseline's)."""
    return "size" if size == p.preprocess.size else "highres_size"


def _quote(word: str) -> str:
    """A name or key on a command line (names are ^[A-Za-z][A-Za-z0-9_-]*$, keys hex: quoted anyway)."""
    return "'" + word.replace("'", "'\\''") + "'"


def _overrides(p: Params, name: str | None, keys: list[str]) -> list[str]:
    """`experiments.<name>.<key>` for each key the stage reads that experiment `name` sets (or sets under)."""
    if name is None:
        return []
    found = []
    for key in keys:
        node: Any = (p.raw.get("experiments") or {}).get(name) or {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.append(f"experiments.{name}.{key}")
    return found


def _params(p: Params, stage: str, experiment: str | None = None, baseline: str | None = None) -> list[str]:
    keys = [k.format(dataset=ITEM, name=baseline) for k in STAGE_PARAMS[stage]]
    return keys + _overrides(p, experiment, keys)


def _params_plain(stage: str) -> list[str]:
    """The params a data stage reads (per dataset: `sources.${item}`)."""
    return [k.format(dataset=ITEM) for k in STAGE_PARAMS[stage]]


def _stage(over: Any, body: dict[str, Any]) -> dict[str, Any]:
    return {"foreach": over, "do": body}


def _data_stages() -> dict[str, Any]:
    return {
        "download": _stage(
            "${datasets}",
            {
                "cmd": 'prdit download --dataset "$DVC_STAGE"',
                "params": _params_plain("download"),
                "outs": [
                    {
                        str(paths.manifest(ITEM)): {
                            "cache": False,
                            "persist": Note(True, "rewritten in place: a re-run lists, never re-fetches"),
                        }
                    }
                ],
            },
        ),
        "ingest": _stage(
            "${datasets}",
            {
                "cmd": Note(
                    f'prdit ingest --dataset "$DVC_STAGE" --threads {DATA_THREADS}', "the rule's threads"
                ),
                "deps": [str(paths.manifest(ITEM))],
                "params": _params_plain("ingest"),
                "outs": [str(paths.interim(ITEM))],
            },
        ),
        "preprocess": _stage(
            "${datasets}",
            {
                "cmd": f'prdit preprocess --dataset "$DVC_STAGE" --threads {limits.DATA_JOBS["preprocess"]["threads"]}',
                "deps": [str(paths.interim(ITEM))],
                "params": _params_plain("preprocess"),
                "outs": [str(paths.processed(ITEM))],
            },
        ),
        "split": _stage(
            "${datasets}",
            {
                "cmd": 'prdit split --dataset "$DVC_STAGE"',
                "deps": [str(paths.processed(ITEM))],
                "params": _params_plain("split"),
                "outs": list(SPLITS),
            },
        ),
    }


def _train(p: Params, stage: str, key: str | None) -> dict[str, Any]:
    """The stage training `stage`'s model of folder key `key` (None: the project's own), per dataset."""
    trainer = p.for_model(stage, key)  # the parameters it trains with (the first experiment with that key)
    deps = [str(paths.processed(ITEM)), *SPLITS]
    up = topology.parent(stage)
    if up is not None:
        deps.append(str(paths.model_file(ITEM, up, trainer.model_key(up))))
    cmd = f'prdit train --dataset "$DVC_STAGE" --stage {stage}' + (f" --key {_quote(key)}" if key else "")
    return _stage(
        "${datasets}",
        {
            "cmd": cmd,
            "deps": deps,
            "params": _params(p, f"train-{stage}", trainer.exp_name if key else None),
            "outs": [str(paths.model_file(ITEM, stage, key))],
            "metrics": [{str(paths.model_dir(ITEM, stage, key) / "metrics.json"): {"cache": False}}],
        },
    )


def _sample(p: Params, s: topology.Stage, experiment: str | None) -> dict[str, Any]:
    size = _size(s.size_key)
    key = p.view(experiment).model_key(s.name) if experiment else None
    return _stage(
        "${datasets}",
        {
            "cmd": f'prdit sample --dataset "$DVC_STAGE" --size {size}' + _named("experiment", experiment),
            "deps": [str(paths.model_file(ITEM, s.name, key))],
            "params": _params(p, "sample", experiment),
            "outs": [str(paths.samples(ITEM, size, experiment))],
        },
    )


def _named(option: str, name: str | None) -> str:
    return f" --{option} {_quote(name)}" if name else ""


def _evaluate(
    p: Params,
    size_key: str,
    over: Any,
    inputs: str,
    experiment: str | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    size = _size(size_key)
    name = experiment or baseline
    report = paths.reports(ITEM, size, name)
    return _stage(
        over,
        {
            "cmd": f'prdit evaluate --dataset "$DVC_STAGE" --size {size}'
            + _named("experiment", experiment)
            + _named("baseline", baseline),
            "deps": [inputs, str(paths.processed(ITEM)), *SPLITS],
            "params": _params(p, "evaluate-baseline" if baseline else "evaluate", experiment, baseline),
            "outs": [
                str(report / "report.html"),
                str(report / "hu_histogram.csv"),
                str(report / "mid_slices.npz"),
            ],
            "metrics": [{str(paths.metrics(ITEM, size, name)): {"cache": False}}],
        },
    )


def _compare(p: Params, size_key: str, over: Any, baselines: list[str]) -> dict[str, Any]:
    """`prdit compare` at one size for the datasets `over`, whose baselines at that size are `baselines`."""
    size = _size(size_key)
    deps = []
    for name in [*(p.experiments() or [None]), *baselines]:
        deps += [
            str(paths.metrics(ITEM, size, name)),
            str(paths.reports(ITEM, size, name) / "mid_slices.npz"),
        ]
    return _stage(
        over,
        {
            "cmd": f'prdit compare --dataset "$DVC_STAGE" --size {size}',
            "deps": deps,
            "params": _params(p, "compare"),
            "outs": [str(paths.compare(ITEM, size))],
        },
    )


def _plots(p: Params, rows: list[str | None], size_keys: list[str]) -> list[Any]:
    """HU histograms of the first dataset: each row (experiment, or the project's own) at each size, then
    that dataset's baselines at theirs."""
    first = "${datasets[0]}"
    files = [paths.reports(first, _size(k), row) for row in rows for k in size_keys]
    files += [
        paths.reports(first, _size(_size_key(p, b.size)), name)
        for name, b in p.baselines.items()
        if b.dataset == p.datasets[0]
    ]
    y = {str(f / "hu_histogram.csv"): Flow(["real", "generated"]) for f in files}
    return [{"HU histograms of real and generated volumes": {"template": "linear", "x": "hu", "y": y}}]


def stages(p: Params) -> dict[str, Any]:
    """The dvc.yaml document (plots and stages) for params `p`."""
    experiments, baselines = p.experiments(), p.baselines
    named = bool(experiments or baselines)
    # without experiments/baselines: every stage whatever highres_size is (the file must not depend on values)
    present = topology.present(p.preprocess.highres_size) if named else topology.STAGES
    samplers = [s for s in topology.TABLE if s.samples and s.name in present]
    size_keys = [s.size_key for s in samplers]
    out = _data_stages()
    for stage in present:  # each distinct model once: experiments with one key share it
        keys = dict.fromkeys(p.view(e).model_key(stage) for e in experiments) if experiments else {None: None}
        for key in keys:
            out[f"train-{paths.model_name(stage, key)}"] = _train(p, stage, key)
    rows = list(experiments) or [None]
    for s in samplers:
        for e in rows:
            out[f"sample-{LABEL[s.size_key]}" + (f"-{e}" if e else "")] = _sample(p, s, e)
    for s in samplers:
        for e in rows:
            size = _size(s.size_key)
            out[f"evaluate-{LABEL[s.size_key]}" + (f"-{e}" if e else "")] = _evaluate(
                p, s.size_key, "${datasets}", str(paths.samples(ITEM, size, e)), experiment=e
            )
    for name, b in baselines.items():  # for its own dataset only: a one-item foreach keeps "$DVC_STAGE"
        size_key = _size_key(p, b.size)
        out[f"evaluate-{LABEL[size_key]}-{name}"] = _evaluate(
            p, size_key, Flow([b.dataset]), b.path, baseline=name
        )
    if named:
        for size_key in size_keys:
            size = getattr(p.preprocess, size_key)
            groups: dict[tuple[str, ...], list[str]] = {}  # datasets by their baselines at this size
            for d in p.datasets:
                mine = tuple(n for n, b in baselines.items() if b.dataset == d and b.size == size)
                groups.setdefault(mine, []).append(d)
            for mine, datasets in groups.items():
                over = "${datasets}" if not mine and datasets == list(p.datasets) else Flow(datasets)
                # one stage per set of baselines; several: those with baselines are named by their first
                suffix = f"-{mine[0]}" if mine and len(groups) > 1 else ""
                out[f"compare-{LABEL[size_key]}{suffix}"] = _compare(p, size_key, over, list(mine))
    return {"plots": _plots(p, rows, size_keys), "stages": out}


# ------------------------------------------------------------------------------------------- writing
def _scalar(value: Any) -> str:
    if isinstance(value, Note):
        return f"{_scalar(value.value)}  # {value.comment}"
    if isinstance(value, Flow):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...")


def _lines(node: Any, indent: int) -> list[str]:
    """Block-style YAML of a mapping or list at `indent` spaces (scalars, Flow lists and Notes inline)."""
    pad = " " * indent
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)) and not isinstance(value, Flow) and value:
                out += [f"{pad}{_scalar(key)}:", *_lines(value, indent + 2)]
            else:
                out.append(f"{pad}{_scalar(key)}: {_scalar(value)}")
        return out
    for item in node:
        if isinstance(item, dict):
            first, *rest = _lines(item, indent + 2)
            out += [f"{pad}- {first[indent + 2 :]}", *rest]
        else:
            out.append(f"{pad}- {_scalar(item)}")
    return out


def render(p: Params) -> str:
    """The text of dvc.yaml for params `p` (the root parameters: experiments and baselines included)."""
    return HEADER + "\n".join(_lines(stages(p.view(None)), 0)) + "\n"


def write(p: Params, path: str | Path = FILE) -> Path:
    """Write dvc.yaml (atomically) for params `p`."""
    with io.atomic_path(path) as tmp:
        tmp.write_text(render(p))
    return Path(path)


def current(p: Params, path: str | Path = FILE) -> bool:
    """Whether dvc.yaml at `path` is what params `p` give."""
    try:
        return Path(path).read_text() == render(p)
    except FileNotFoundError:
        return False


def check_under_dvc(p: Params) -> None:
    """Inside a DVC stage (DVC_STAGE set), stop before any work when dvc.yaml no longer matches params.yaml:
    its stages would name other experiments' model folders (a file DVC itself reads: present)."""
    if os.environ.get("DVC_STAGE") and FILE.is_file() and not current(p):
        raise StaleError(STALE)
