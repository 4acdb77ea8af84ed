"""Print the jobs of the Snakefile's DAG as JSON, read from Snakemake's own DAG (not its printed plan).

`python tests/support/snakemake_dag.py ROOT [CONFIGFILE ...]`: every job of a forced plan with its rule, wildcards,
formatted shell command, inputs, outputs, threads, the params it declares as used, its log, benchmark,
resources and conda environment. A separate process:
Snakemake changes the working directory and logging of the process it runs in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings,
    DAGSettings,
    OutputSettings,
    Quietness,
    ResourceSettings,
)


def jobs(root: Path, configfiles: list[Path]) -> list[dict]:
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            snakefile=root / "Snakefile",
            workdir=root,
            resource_settings=ResourceSettings(cores=256),  # every rule gets the threads it asks for
            config_settings=ConfigSettings(configfiles=configfiles),
        )
        workflow_api.dag(DAGSettings(forceall=True))
        workflow = workflow_api._workflow  # the DAG itself: Snakemake's API only prints it
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        return [
            {
                "rule": job.rule.name,
                "wildcards": dict(job.wildcards),
                "shell": job.shellcmd,
                "input": [str(f) for f in job.input],
                "output": [str(f) for f in job.output],
                "threads": job.threads,
                "used": sorted(job.params.get("used", {})),
                "log": [str(f) for f in job.log],
                "benchmark": str(job.benchmark) if job.benchmark else None,
                "resources": sorted(k for k in job.resources.keys() if not k.startswith("_")),
                "conda": bool(job.rule.conda_env),
            }
            for job in workflow.dag.jobs
        ]


if __name__ == "__main__":
    print(json.dumps(jobs(Path(sys.argv[1]).resolve(), [Path(c).resolve() for c in sys.argv[2:]])))
