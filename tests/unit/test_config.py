"""params.yaml validation: every bad value fails before work starts and names its key."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from prdit import paths, topology
from prdit.config import ConfigError, Params, from_dict, load
from tests.support.project import ROOT, config_layers, params_with, tool_env


def test_defaults_validate_and_describe_the_demo() -> None:
    p = params_with()
    assert p.datasets == ("phantom",)
    assert p.sizes() == [p.preprocess.size, 2 * p.preprocess.size]
    assert p.train.stage("global") is p.train.global_


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"preprocess": {"size": 30}}, "preprocess.size"),
        ({"preprocess": {"window": [1000, -1000]}}, "preprocess.window"),
        ({"preprocess": {"highres_size": 48}}, "preprocess.highres_size"),
        ({"sample": {"stepz": 3}}, "sample.stepz"),
        ({"typo_section": 1}, "typo_section"),
        ({"train": {"local": {"lr": "fast"}}}, "train.local.lr"),
        ({"train": {"common": {"ema_decay": 1.5}}}, "train.common.ema_decay"),
        ({"datasets": ["nowhere"]}, "sources.nowhere"),
        ({"split": {"val_fraction": 0.6, "test_fraction": 0.5}}, "split"),
        ({"sample": {"k": 50, "steps": 10}}, "sample.k"),
        ({"sources": {"phantom": {"format": "jpeg"}}}, "sources.phantom.format"),
        ({"sources": {"phantom": {"path": "/elsewhere"}}}, "sources.phantom.path"),
        ({"train": {"global": {"model": "PRDiT-T/12/2"}}}, "train.global.model"),
        ({"train": {"global": {"model": "PRDiT-B/10/2"}}}, "train.global.model"),
    ],
)
def test_bad_values_name_their_key(override: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"key '{key}'"):
        params_with(override)


def test_later_files_override_earlier(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"sample": {"steps": 7}}))
    p = load([ROOT / "params.yaml", extra])
    assert p.sample.steps == 7 and p.sample.k == params_with().sample.k


def _leaves(node: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_paper_configs_validate_and_every_value_they_set_is_in_effect() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        p = load(config_layers(path.name))
        for key, value in _leaves(yaml.safe_load(path.read_text())).items():
            assert p.section(key) == value, f"{path.name}: {key}"


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_paper_configs_plan_the_paper_dag_with_the_documented_command(config: str) -> None:
    """`snakemake ... all --configfile configs/X.yaml`, as the file's header says: every stage of the
    configured sizes, the MedicalNet weights fetched before evaluating."""
    layers = config_layers(config)
    # -F: plan every job, whatever outputs (e.g. downloaded weights) this checkout already holds
    res = subprocess.run(
        ["snakemake", "-n", "-F", "all", "--configfile", *map(str, layers[1:])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    p = load(layers)
    planned = set(re.findall(r"^(?:local)?rule (\w+):", res.stdout, re.M))
    expected = {"download", "ingest", "preprocess", "split", "train", "sample", "evaluate", "all"}
    if p.evaluate.weights:  # downloaded before evaluating
        expected |= {"fetch_weights"}
    if p.ingest.shards > 1:  # the cases spread over jobs (workflow/rules/data.smk)
        expected |= {"ingest_plan", "ingest_shard"}
    if p.preprocess.shards > 1:
        expected |= {"preprocess_shard"}
    if p.sample.shards > 1:  # sampling jobs per size, joined by merge_samples (workflow/rules/sample.smk)
        expected |= {"merge_samples"}
    if p.experiments() or p.baselines:  # one comparison per dataset and size
        expected |= {"compare"}
    if p.baselines:
        expected |= {"evaluate_baseline"}
    assert planned == expected
    # one training job per distinct model: experiments that read the same values for a stage share it
    views = [p.view(e) for e in p.experiments()] or [p]
    models = {(s, v.model_key(s)) for v in views for s in topology.present(p.preprocess.highres_size)}
    assert len(re.findall(r"^rule train:", res.stdout, re.M)) == len(p.datasets) * len(models)
    runs = len(p.datasets) * len(p.sizes()) * len(views)
    assert len(re.findall(r"^rule evaluate:", res.stdout, re.M)) == runs
    sampling = len(re.findall(r"^rule sample:", res.stdout, re.M))
    assert sampling == runs * p.sample.shards
    for rule, shards in (("ingest_shard", p.ingest.shards), ("preprocess_shard", p.preprocess.shards)):
        assert (
            len(re.findall(rf"^(?:local)?rule {rule}:", res.stdout, re.M))
            == len(p.datasets) * (shards > 1) * shards
        )
    for dataset in p.datasets:
        for view in views:
            assert f"{paths.metrics(dataset, p.preprocess.size, view.exp_name)}" in res.stdout


def test_used_params_narrow_download_to_its_source() -> None:
    p = params_with()
    assert set(p.used("download", "phantom")) == {"sources.phantom", "phantom"}
    assert set(p.used("sample")) == {
        "sample",
        "diffusion",
        "preprocess.window",
        "preprocess.fov_mm",
        "protocol",
    }


def test_cli_rejects_bad_params_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"preprocess": {"size": 20}}))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root
    res = subprocess.run(
        [
            "prdit",
            "split",
            "--params",
            str(ROOT / "params.yaml"),
            "--params",
            str(bad),
            "--dataset",
            "phantom",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert res.returncode == 2
    assert "preprocess.size" in res.stderr and "multiple of 8" in res.stderr
    assert not (tmp_path / "data").exists()


def test_snakemake_validates_with_the_same_schema(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"preprocess": {"window": [500, -500]}}))
    res = subprocess.run(
        ["snakemake", "-n", "--configfile", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert res.returncode != 0
    assert "preprocess.window" in res.stdout + res.stderr


def test_snakemake_refuses_command_line_config_the_rules_would_not_see() -> None:
    res = subprocess.run(
        ["snakemake", "-n", "--config", "experiment=other"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert res.returncode != 0
    assert "--configfile" in res.stdout + res.stderr


def _with(**sections) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return from_dict({**raw, **sections})


def test_experiments_are_views_that_share_models_by_lineage() -> None:
    p = _with(
        experiments={
            "d2": None,
            "d1": {"train": {"global": {"model": "PRDiT-T/10/1"}}},
            "d1b": {"train": {"global": {"model": "PRDiT-T/10/1"}}},
            "lr": {"train": {"local": {"lr": 1e-3}}},
        }
    )
    assert p.experiments() == ("d2", "d1", "d1b", "lr")
    d1 = p.view("d1")
    assert (
        d1.exp_name == "d1"
        and d1.train.global_.model == "PRDiT-T/10/1"
        and p.train.global_.model != "PRDiT-T/10/1"
    )
    assert d1.experiments() == p.experiments() and d1.view("d2") is p.view("d2")
    # the project's own values: today's folders; an override: a key, shared by equal overrides
    assert [p.view("d2").model_key(s) for s in topology.STAGES] == [None, None, None]
    assert d1.model_key("local") is None and d1.model_key("global") is not None
    assert d1.model_key("global") == p.view("d1b").model_key("global")
    # a changed stage 1 changes every stage above it
    lr = p.view("lr")
    assert all(lr.model_key(s) not in (None, d1.model_key(s)) for s in topology.STAGES)
    assert p.for_model("global", d1.model_key("global")).exp_name == "d1"
    assert p.for_model("global", None) is p
    with pytest.raises(ConfigError, match="no experiment trains a global model"):
        p.for_model("global", "0123456789ab")
    with pytest.raises(ConfigError, match="experiment 'nope': not under 'experiments'"):
        p.view("nope")


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"experiments": {"compare": {}}}, "experiments"),
        ({"experiments": {"1a": {}}}, "experiments"),
        ({"experiments": {"a": {"evaluate": {"seed": 1}}}}, "experiments.a.evaluate"),
        ({"experiments": {"a": {"sample": {"stepz": 3}}}}, "sample.stepz"),
        (
            {
                "experiments": {"a": {}},
                "baselines": {"a": {"dataset": "phantom", "size": 32, "path": "x", "values": "hu"}},
            },
            "baselines.a",
        ),
        (
            {"baselines": {"b": {"dataset": "nope", "size": 32, "path": "x", "values": "hu"}}},
            "baselines.b.dataset",
        ),
        (
            {"baselines": {"b": {"dataset": "phantom", "size": 48, "path": "x", "values": "hu"}}},
            "baselines.b.size",
        ),
        (
            {"baselines": {"b": {"dataset": "phantom", "size": 32, "path": "x", "values": [1, 0]}}},
            "baselines.b.values",
        ),
        (
            {"baselines": {"b": {"dataset": "phantom", "size": 32, "path": "x", "values": "0-1"}}},
            "baselines.b.values",
        ),
    ],
)
def test_bad_experiments_and_baselines_name_the_key(sections: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        _with(**sections)
