"""Experiments: the lecture's claims reproduced on demand, each with a table, plots and a verdict.

>>> from cnnlab.experiments import run_experiment
>>> result = run_experiment("receptive-field", size="tiny", out="runs/rf")  # doctest: +SKIP
>>> result.verdict  # doctest: +SKIP
'HOLDS'
"""

from cnnlab.experiments.base import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    REGISTRY,
    RESULT_FILE,
    SIZES,
    TABLE_CSV,
    TABLE_JSON,
    VERDICT_RULE,
    Check,
    Experiment,
    ExperimentResult,
    SizeInfo,
    combine_verdicts,
    get_experiment,
    list_experiments,
    run_experiment,
)
from cnnlab.experiments.static import BOTTLENECK, COMPLEXITY, RECEPTIVE_FIELD

# Registry order is the order `cnnlab experiment list` shows.
for _experiment in (RECEPTIVE_FIELD, COMPLEXITY, BOTTLENECK):
    REGISTRY.add(_experiment)

__all__ = [
    "FAILS", "HOLDS", "INCONCLUSIVE", "RESULT_FILE", "SIZES", "TABLE_CSV", "TABLE_JSON", "VERDICT_RULE",
    "Check", "Experiment", "ExperimentResult", "SizeInfo", "combine_verdicts", "get_experiment",
    "list_experiments", "run_experiment",
]
