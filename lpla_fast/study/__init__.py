"""The study behind `lpla experiment` and `lpla attack`: the performance-privacy trade-off.

For each contrastive framework it trains a target and a shadow encoder (cached in the run
folder: a rerun with the same config reuses finished encoders and resumes unfinished ones),
measures the target's feature quality, queries K augmented views of every split once at the
largest K (smaller budgets are slices of it), and attacks the target's members and
non-members with every attack. Then it sweeps p, K and the attacker's knowledge level, and
correlates feature quality with leakage across frameworks. Everything goes to one run folder:

    config.json, splits.json               what made the run
    encoders/<framework>/<role>/           the trained encoders (role: target, shadow)
    embeddings/<framework>/*.npy           view embeddings (only with save_embeddings)
    calibration-<framework>[-head].json    fitted LpLA calibrations, for `lpla score`
    results.json, report.md, plots/*.png   every number, the report, the figures

Modules: settings (StudyConfig, ExperimentConfig), knowledge (ViewSet, AuditSplit,
make_knowledge), plan (the job list), run (run_experiment, run_attacks, attack_study),
results (the typed, versioned results and load_results), stats (correlations), report,
plots, log (stage lines).
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
