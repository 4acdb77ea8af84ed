"""The stage layer: one module per `prdit <command>`, named after it (`prdit fetch-weights` ->
prdit/stages/fetch_weights.py), whose `run` is what the command runs.

A stage module reads the parameters (prdit.config.Params), calls the library packages (prdit.acquire, .data,
.model, .diffusion, .train, .evaluate) with explicit arguments, logs to MLflow (prdit.tracking) and writes
the outputs where the project layout puts them (prdit.paths). The library knows nothing of parameter files,
tracking or the layout (tests/unit/test_imports.py keeps it so), so a rule -> `prdit <command>` -> its module is
one hop. A module whose name starts with `_` is shared by several stages, not a command.
"""
