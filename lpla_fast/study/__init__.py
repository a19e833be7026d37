"""The study behind `lpla experiment` and `lpla attack`: the performance-privacy trade-off.

It trains the encoders of every configuration (framework x architecture x training-time
defense) in one parallel stage: per configuration a pool of encoders on random halves of the
candidate pool, attacked in turn as targets (one per seed) with the others as reference
encoders, and for the headline configurations a complementary pair of shadow encoders. It
then measures each target's feature quality, queries K augmented views once at the largest K
(smaller budgets are slices), runs every table's attacks, and reports leakage beside quality
with across-seed intervals. Everything goes to one run folder:

    config.json, splits.json                 what made the run
    encoders/<configuration>/<encoder>/      the trained encoders: seed<s>, shadow, shadow-complement
    embeddings/<configuration>/*.npy         view embeddings (only with save_embeddings)
    calibration-<framework>[-head].json      seed 0's fitted LpLA calibrations, for `lpla score`
    results.json                             every number (typed records, `load_results`)
    report.md, report.html, plots/*.png      the report and its figures
    scores.parquet, roc/*.npz                per-sample scores; Privacy Meter-style ROC files

Modules: settings (StudyConfig, ExperimentConfig, presets), groups (configurations and their
encoders), knowledge (ViewSet, AuditSplit, make_knowledge), plan (the tables' jobs),
attack_stage (one target's attacks), targets (one configuration's queries, quality and
attacks), defenses, run (run_experiment, run_attacks), results (the typed, versioned results),
stats (across-seed intervals, correlations), report / findings / definitions / html / plots /
exports (the outputs), log (stage lines).
"""

from ..splits import ROLES
from .knowledge import AuditSplit, ViewSet, make_knowledge
from .plan import Job, plan_jobs
from .results import RESULTS_SCHEMA, RESULTS_VERSION, AttackRecord, EncoderRecord, Results, load_results
from .run import attack_study, run_attacks, run_experiment
from .settings import ExperimentConfig, StudyConfig
from .stats import leakage_correlation

__all__ = [
    "AttackRecord", "AuditSplit", "EncoderRecord", "ExperimentConfig", "Job", "RESULTS_SCHEMA", "RESULTS_VERSION",
    "ROLES", "Results", "StudyConfig", "ViewSet", "attack_study", "leakage_correlation", "load_results",
    "make_knowledge", "plan_jobs", "run_attacks", "run_experiment",
]
