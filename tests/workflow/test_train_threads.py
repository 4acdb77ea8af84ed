"""The train rule's CPUs follow its GPUs: per node, one per GPU process and one per loader worker (capped)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.project import ROOT, tool_env


def train_threads(configs: list[Path]) -> dict[str, int]:
    cmd = [sys.executable, str(ROOT / "tests" / "support" / "snakemake_dag.py"), str(ROOT), *map(str, configs)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=tool_env())
    assert res.returncode == 0, res.stderr[-3000:]
    return {j["wildcards"]["model"]: j["threads"] for j in json.loads(res.stdout) if j["rule"] == "train"}


def test_train_threads_are_gpus_per_node_times_workers_plus_one(tmp_path: Path) -> None:
    more = tmp_path / "gpus.yaml"  # configs/lidc-256.yaml: num_workers 8
    more.write_text(
        yaml.safe_dump({"resources": {"train": {"global": {"gpu": 8, "nodes": 4}, "highres": {"gpu": 8}}}})
    )
    threads = train_threads([ROOT / "configs" / "lidc-256.yaml", more])
    assert threads == {"local": 1 * 9, "global": 2 * 9, "highres": 64}  # 8 x 9 = 72, capped at 64
