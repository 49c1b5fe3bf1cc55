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
    REPORT_FILE,
    RESULT_FILE,
    SETTINGS_FILE,
    SIZES,
    TABLE_CSV,
    TABLE_JSON,
    THREADS_KEY,
    VERDICT_RULE,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
    combine_verdicts,
    get_experiment,
    list_experiments,
    run_experiment,
)
from cnnlab.experiments import (
    activations,
    depth,
    evaluation,
    initialisation,
    lesion,
    surface,
    normalization,
    preact,
    preprocessing,
    regularisation,
    scratch,
    search,
    separable,
    shift,
    static,
    transfer,
)

# Registry order is the order `cnnlab experiment list` shows: the lecture's order, roughly.
for _module in (initialisation, static, separable, shift, depth, preact, lesion, surface, normalization, activations, preprocessing, regularisation, search,
                transfer, scratch, evaluation):
    for _experiment in _module.EXPERIMENTS:
        REGISTRY.add(_experiment)

__all__ = [
    "FAILS", "HOLDS", "INCONCLUSIVE", "REPORT_FILE", "RESULT_FILE", "SETTINGS_FILE", "SIZES", "TABLE_CSV", "TABLE_JSON", "THREADS_KEY", "VERDICT_RULE",
    "Check", "Experiment", "ExperimentResult", "RunContext", "SizeInfo", "combine_verdicts", "get_experiment",
    "list_experiments", "run_experiment",
]
