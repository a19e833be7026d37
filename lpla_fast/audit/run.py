"""`lpla audit`: audit one encoder on one's own images, with the attacks the knowledge allows.

Stages: build the target (`encoder_spec`) and check every input; decode the members,
non-members and population once into image caches (OUT/cache/); settle the knowledge: none
(the global attacks at the audit level, calibrated on held-out halves of the members and
non-members, `study.knowledge.AuditSplit`), the user's reference encoders (`--references`), or
R references trained here on random halves of the candidate pool (`--train-references`, locally
or on Ray, `encoders.parallel.train_encoders`); query K views of every candidate and of the
population under the target and every reference; run the study's attack stage
(`study.attack_stage.attack_target`: the global attacks and sweeps, LiRA online and offline and
RMIA over every statistic); write the study's outputs plus scores with ids and paths, the LpLA
calibration and the contact sheet of the most and least exposed members.

Everything that can refuse the run is checked before OUT is created: the caches are built in a
staging folder beside OUT and moved in once the images passed their checks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np

from ..encoders.views import SPLIT_VIEW_SEEDS, query_views
from ..fileio import jsonable, write_json
from ..study.log import Stages
from .candidates import ROLES, CandidatePool, build_caches, check_disjoint, make_pool

# Without --population, this fraction of the non-members is set aside as the population of the
# references (RMIA's known non-members, kept out of every encoder) when references are trained.
POPULATION_FRACTION = 0.25
# The views of each role are drawn with the seed of the study's split playing that role, so an
# audit of a `lpla train` encoder queries what `lpla attack --splits` queries.
ROLE_SPLITS = {"members": "target_members", "nonmembers": "target_nonmembers", "population": "reference"}


@dataclass
class AuditConfig:
    """Everything `lpla audit` takes (its flags, one for one; see `lpla audit --help`)."""

    encoder: str
    members: str
    nonmembers: str
    out: str
    weights: Optional[str] = None
    output: str = "backbone"
    population: Optional[str] = None
    references: Optional[str] = None
    train_references: int = 0
    recipe: Optional[str] = None
    framework: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    augmentation: Optional[str] = None
    engine: str = "local"
    address: Optional[str] = None
    device: str = "cpu"
    gpus_per_reference: Optional[float] = None
    workers: Optional[int] = None
    k: int = 8
    seed: int = 0
    image_size: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    skip_bad: bool = False
    n_bootstrap: int = 1000
    exposed: int = 8

    @property
    def knowledge(self) -> str:
        return "references" if self.references else "train-references" if self.train_references else "none"

    def check(self) -> None:
        from ..encoders.parallel import ENGINES

        if self.references and self.train_references:
            raise ValueError("give either --references DIR or --train-references R, not both")
        if self.train_references and (int(self.train_references) != self.train_references or self.train_references < 2):
            raise ValueError(f"--train-references must be an integer >= 2 (LiRA needs in and out references), "
                             f"got {self.train_references}")
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"--K must be an integer >= 1, got {self.k}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "ray" and not self.train_references:
            raise ValueError("--engine ray trains reference encoders: it needs --train-references R")
        if self.gpus_per_reference is not None and not 0 < self.gpus_per_reference <= 1:
            raise ValueError(f"--gpus-per-reference must be in (0, 1], got {self.gpus_per_reference}")
        if self.device not in ("cpu",) and not str(self.device).startswith("cuda"):
            raise ValueError(f"--device must be cpu or cuda[:i], got {self.device!r}")
        if self.exposed < 1:
            raise ValueError(f"--exposed must be >= 1, got {self.exposed}")
        for name, path in (("--members", self.members), ("--nonmembers", self.nonmembers),
                           ("--population", self.population)):
            if path is not None and not _source_exists(path):
                raise ValueError(f"{name}: no such image source {path!r}")


def _source_exists(source: str) -> bool:
    import glob

    return os.path.exists(source) or bool(glob.glob(source))


def run_audit(config: AuditConfig, progress: bool = True):
    """Run the audit into config.out and return its `study.results.Results`."""
    from ..encoders.training import resolve_device
    from .encoder_spec import load_target, reference_recipe
    from .references import scan_references

    stages = Stages(progress, "audit")
    config.check()
    device = str(resolve_device(config.device))
    with stages.timed("target", f"building the target encoder {config.encoder}"):
        target = load_target(config.encoder, config.weights, config.output, config.image_size, config.mean,
                             config.std, config.augmentation, device)
    pre = target.preprocessing
    stages.say(f"target {target.label} ({target.architecture}), input {pre.image_size}x{pre.image_size}, "
               f"mean {pre.mean}, std {pre.std} [{pre.source}]; released: {config.output}")
    recipe, user_refs = None, None
    if config.train_references:
        if target.external and config.mean is not None:
            raise ValueError("--mean/--std override the model's preprocessing, which references trained here would "
                             "not share; train them with the model's own (drop --mean/--std)")
        if target.external and config.output == "head":
            raise ValueError("--output head of an external model is its classifier, which reference encoders "
                             "trained here do not have; audit --output backbone")
        recipe = reference_recipe(target, config.recipe, config.framework, config.epochs, config.batch_size,
                                  config.lr, config.augmentation, device)
    elif config.recipe:
        raise ValueError("--recipe is the recipe of references trained here: it needs --train-references R")
    if config.references:
        user_refs = scan_references(config.references, target.external)
        with stages.timed("references", f"loading {len(user_refs)} reference encoders from {config.references}"):
            user_encoders = _load_user_references(config, target, user_refs, device)

    sources = {role: src for role, src in zip(ROLES, (config.members, config.nonmembers, config.population)) if src}
    pool, cache_folder = _prepare_images(config, sources, pre.image_size, recipe is not None, stages, progress)
    try:
        if user_refs is not None:
            pool, user_masks = _user_masks(pool, user_refs)
        _check_sizes(config, pool)
    except BaseException:
        if cache_folder is not None:
            shutil.rmtree(os.path.dirname(cache_folder), ignore_errors=True)
        raise
    os.makedirs(config.out, exist_ok=True)
    if cache_folder is not None:  # staged: move the checked caches into OUT
        os.replace(cache_folder, os.path.join(config.out, "cache"))
        shutil.rmtree(os.path.dirname(cache_folder), ignore_errors=True)
        pool = _reopen(pool, os.path.join(config.out, "cache"))

    with stages.timed("query/target", f"querying the target: {pool.n_candidates} candidates"
                      f"{'' if pool.population is None else f' and {len(pool.population[1])} population images'}, "
                      f"K={config.k}"):
        target_views = query_pool(target.encoder, pool, config, device)
    refset = None
    ref_info = {}
    if user_refs is not None:
        encoders, masks = user_encoders, user_masks
        ref_info = {"source": config.references, "R": len(user_refs), "folders": [r.folder for r in user_refs]}
    elif config.train_references:
        encoders, masks, ref_info = _train_references(config, recipe, pool, stages, progress)
    if config.knowledge != "none":
        with stages.timed("query/references", f"querying {len(encoders)} reference encoders"):
            ref_views = [query_pool(e, pool, config, device) for e in encoders]
        refset = _reference_set(pool, target_views, ref_views, masks)
    return _attack_and_write(config, target, pool, target_views, refset, ref_info, stages, progress)


def _prepare_images(config, sources, image_size, carve, stages, progress):
    """(pool, staged cache folder or None): caches built and checked (in a staging folder when
    OUT does not hold them yet), then the candidate pool."""
    final = os.path.join(config.out, "cache")
    staged = None
    if os.path.isdir(final):
        folder = final
    else:
        parent = os.path.dirname(os.path.abspath(config.out))
        if not os.path.isdir(parent):
            raise ValueError(f"--out {config.out!r}: its parent folder does not exist")
        staged = tempfile.mkdtemp(prefix=".lpla-audit-", dir=parent)
        folder = os.path.join(staged, "cache")
    try:
        with stages.timed("cache", f"decoding {', '.join(sources)} into image caches at {image_size}x{image_size}"):
            caches = build_caches(sources, folder, image_size, config.skip_bad, progress)
        for role, cache in caches.items():
            if cache.skipped:
                stages.say(f"{role}: {len(cache.skipped)} images skipped (first: {cache.skipped[0]['id']}: "
                           f"{cache.skipped[0]['reason']})")
        check_disjoint(caches, sources)
        pool = make_pool(caches, sources, POPULATION_FRACTION if carve else 0.0, config.seed)
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    return pool, (folder if staged is not None else None)


def _reopen(pool: CandidatePool, folder: str) -> CandidatePool:
    from ..streaming.cache import open_image_cache

    pool.caches = {role: open_image_cache(os.path.join(folder, role)) for role in pool.caches}
    return pool


def _check_sizes(config: AuditConfig, pool: CandidatePool) -> None:
    n_m, n_n = pool.n_members, len(pool.pool_rows)
    if n_m < 4 or n_n < 2:
        raise ValueError(f"the audit level needs at least 4 members and 2 non-members in the pool, got {n_m} and "
                         f"{n_n}{'' if pool.population is None or pool.population[0] != 'nonmembers' else ' (after setting a quarter of the non-members aside as the population)'}")
    if pool.population is not None and len(pool.population[1]) < 2:
        raise ValueError(f"the population needs at least 2 images, got {len(pool.population[1])}")
    if config.train_references and pool.n_candidates < 2 * 4:
        raise ValueError(f"training references on halves of the pool needs at least 8 candidates, "
                         f"got {pool.n_candidates}")


def query_pool(encoder, pool: CandidatePool, config: AuditConfig, device) -> dict:
    """{"candidates": (N, K, D), "population": (M, K, D) or None} under one encoder; each role's
    views are seeded as its study split's (ROLE_SPLITS), so every encoder sees the same views."""
    def views(role, rows):
        return query_views(encoder, pool.caches[role].images, config.k, seed=config.seed + SPLIT_VIEW_SEEDS[ROLE_SPLITS[role]],
                           output=config.output, device=device, rows=rows)

    import torch

    members = views("members", pool.member_rows)
    if pool.population is not None and pool.population[0] == "nonmembers":
        # One query of every non-member (pool and population), then split: the views of a row do
        # not depend on which part it ends up in.
        everything = views("nonmembers", None)
        nonmembers, population = everything[torch.as_tensor(pool.pool_rows)], everything[torch.as_tensor(pool.population[1])]
    else:
        nonmembers = views("nonmembers", pool.pool_rows)
        population = None if pool.population is None else views("population", pool.population[1])
    return {"candidates": torch.cat([members, nonmembers]), "population": population}


def _load_user_references(config, target, user_refs, device) -> list:
    """The user's reference encoders, each checked to be of the target's architecture."""
    from ..encoders import load_encoder
    from .encoder_spec import load_target

    encoders = []
    for r in user_refs:
        if os.path.isdir(r.encoder_path):
            encoder = load_encoder(r.encoder_path, device=device)
            if encoder.config.backbone != target.architecture:
                raise ValueError(f"reference {r.folder!r} is a {encoder.config.backbone}; the target is "
                                 f"{target.architecture}")
        else:
            encoder = load_target(target.spec, r.encoder_path, config.output, config.image_size, config.mean,
                                  config.std, config.augmentation, device).encoder
        encoders.append(encoder)
    return encoders


def _user_masks(pool: CandidatePool, user_refs):
    """(pool, (R, N) masks) for the user's references. Without --population, the non-members that
    no reference trained on are known non-members of every encoder: they become the population
    (out of the candidates), as with references trained here."""
    from .candidates import CandidatePool
    from .references import masks_from_ids

    def masks_over(p: CandidatePool) -> np.ndarray:
        # A reference names its members by path, or by cache id where those are unique.
        short = p.ids()
        unique = len(set(short)) == len(short)
        return masks_from_ids(user_refs, [[path] + ([i] if unique else []) for path, i in zip(p.paths(), short)])

    masks = masks_over(pool)
    if pool.population is None:
        never = ~masks.any(axis=0) & ~pool.is_member
        if never.sum() >= 2 and (~never & ~pool.is_member).sum() >= 2:
            rows = pool.pool_rows[never[pool.n_members:]]
            pool = CandidatePool(pool.caches, pool.sources, pool.member_rows, pool.pool_rows[~never[pool.n_members:]],
                                 ("nonmembers", rows))
            masks = masks_over(pool)
    return pool, masks


def _train_references(config, recipe, pool, stages, progress):
    from dataclasses import replace

    from ..attacks import draw_reference_masks
    from ..encoders.parallel import TrainJob, train_encoders
    from .references import read_member_ids, reference_seed, write_member_ids

    R = int(config.train_references)
    masks = draw_reference_masks(pool.n_candidates, R, config.seed)
    paths = pool.paths()
    root = os.path.join(config.out, "references")
    jobs = []
    for r in range(R):
        folder = os.path.join(root, f"r{r}")
        members = [paths[i] for i in np.flatnonzero(masks[r])]
        existing = read_member_ids(folder) if os.path.isdir(folder) else None
        if existing is not None and existing != members:
            raise ValueError(f"{folder!r} was trained on other candidates (another --seed or other images); "
                             "use another --out")
        write_member_ids(folder, members)
        rows = np.flatnonzero(masks[r])
        jobs.append(TrainJob(pool.images(rows), replace(recipe, seed=reference_seed(config.seed, r)), folder,
                             name=f"r{r}"))
    start, done = time.perf_counter(), []

    def say(line: str) -> None:
        done.append(line)
        elapsed = time.perf_counter() - start
        eta = elapsed / len(done) * (R - len(done))
        stages.say(f"reference {line} [{len(done)}/{R}, ETA {eta:.0f} s]")

    where = f"on Ray ({config.address or 'local cluster'})" if config.engine == "ray" else "locally"
    with stages.timed("references", f"training {R} reference encoders {where}: {recipe.framework}/{recipe.backbone}, "
                      f"{recipe.epochs} epochs, each on half of {pool.n_candidates} candidates"):
        trained = train_encoders(jobs, config.workers, progress, say=say, engine=config.engine,
                                 address=config.address, gpus_per_job=config.gpus_per_reference)
    info = {"trained": R, "recipe": recipe.to_dict(), "engine": config.engine, "folders": [j.folder for j in jobs],
            "seconds": [i["seconds"] for _, i in trained], "reused": [i["reused"] for _, i in trained]}
    return [e for e, _ in trained], masks, info


def _reference_set(pool, target_views, ref_views, masks):
    from ..study.attack_stage import ReferenceSet

    has_pop = target_views["population"] is not None
    return ReferenceSet(target_views["candidates"], pool.is_member, [v["candidates"] for v in ref_views], masks,
                        [v["population"] for v in ref_views] if has_pop else None,
                        target_views["population"] if has_pop else None)


def _attack_and_write(config, target, pool, target_views, refset, ref_info, stages, progress):
    from ..attacks import STATISTICS
    from ..study import ViewSet
    from ..study.attack_stage import attack_target
    from ..study.plan import plan_jobs, reference_jobs
    from ..study.results import Results
    from ..study.run import environment, write_outputs
    from ..study.settings import StudyConfig

    K = int(config.k)
    # The kNN attack's neighbours: 10, or fewer when its banks (a quarter of the members at the
    # audit level, the population at the reference level) are smaller.
    banks = [pool.n_members // 4] + ([] if pool.population is None else [len(pool.population[1])])
    study = StudyConfig(attack_params={"knn": {"k": max(1, min([10] + banks))}}, seed=config.seed, level="audit", k=K, ks=tuple(k for k in (1, 2, 4, 8, 16) if k <= K),
                        n_bootstrap=config.n_bootstrap, reference_ks=tuple(sorted({1, K})),
                        reference_statistics=tuple(STATISTICS))
    candidates = target_views["candidates"]
    member = pool.is_member
    views = ViewSet(members=candidates[member], nonmembers=candidates[~member],
                    target_reference=target_views["population"])
    jobs = plan_jobs(study, K) + (reference_jobs(study, "references", K) if refset is not None else [])
    ids = (np.flatnonzero(member), np.flatnonzero(~member))
    with stages.timed("attack", f"{len(jobs)} attack fits ({config.knowledge} knowledge)"):
        stage = attack_target(views, study, jobs, ids, refset, progress, framework=target.label,
                              output=config.output, seed=0, backbone=target.architecture)
    skipped = {role: c.skipped for role, c in pool.caches.items() if c.skipped}
    audit = {k: v for k, v in asdict(config).items()}
    audit.update(knowledge=config.knowledge, preprocessing=target.preprocessing.to_dict(),
                 population=None if pool.population is None else {
                     "from": pool.population[0], "count": int(len(pool.population[1])),
                     "fraction_of_nonmembers": POPULATION_FRACTION if pool.population[0] == "nonmembers" else None},
                 references=ref_info, skipped_images=skipped)
    results = Results(command="audit", config={"study": study.to_dict(), "audit": jsonable(audit)},
                      inputs={"--encoder": config.encoder, "--weights": config.weights, "--members": config.members,
                              "--nonmembers": config.nonmembers, "--population": config.population,
                              "--references": config.references},
                      environment=environment(str(config.device), config.workers),
                      splits={"members": pool.n_members, "nonmembers": int(len(pool.pool_rows)),
                              "population": 0 if pool.population is None else int(len(pool.population[1]))},
                      records=stage.records)
    results.dataset = {"name": "images", "num_samples": pool.n_candidates,
                       "image_shape": list(pool.caches["members"].images.shape[1:])}
    if stage.calibration is not None:
        write_json(os.path.join(config.out, "calibration.json"), jsonable(stage.calibration))
        results.calibration_files[f"{target.label}/{config.output}"] = "calibration.json"
    with stages.timed("report", "writing the report, scores.parquet, roc/*.npz and plots/exposed.png"):
        from .contact_sheet import write_contact_sheet

        sheet = write_contact_sheet(results.records, pool, os.path.join(config.out, "plots", "exposed.png"),
                                    config.exposed)
        write_outputs(results, config.out, stages, appendix=_report_appendix(skipped, sheet),
                      scores_table_of=lambda records: audit_scores_table(records, pool))
        if sheet:
            results.plots.append("exposed.png")
    results.timings = {"stages": dict(stages.seconds), "total": round(stages.elapsed(), 3)}  # the report's included
    results.save(os.path.join(config.out, "results.json"))
    stages.say(f"done in {stages.elapsed():.0f} s: {os.path.join(config.out, 'report.md')}")
    return results


def audit_scores_table(records, pool: CandidatePool):
    """scores.parquet's table: one row per (candidate, attack) of the main and reference tables,
    with the candidate's `id` and `path` beside the study's columns (`sample` is its index)."""
    import pyarrow as pa

    from ..study.exports import scores_table

    from .contact_sheet import AUDIT_STUDIES

    kept = [r for r in records if r.samples is not None and r.metrics and r.study in AUDIT_STUDIES]
    table = scores_table(kept)
    samples = table.column("sample").to_numpy()
    ids, paths = np.array(pool.ids(), dtype=object), np.array(pool.paths(), dtype=object)
    table = table.append_column("id", pa.array(ids[samples].tolist(), pa.string()))
    table = table.append_column("path", pa.array(paths[samples].tolist(), pa.string()))
    statistic = [r.params.get("statistic") if r.study == "references" else None for r in kept]
    lengths = np.array([len(r.samples.score) for r in kept], np.int64)
    table = table.append_column("statistic", pa.array(np.repeat(np.array(statistic, dtype=object), lengths).tolist(),
                                                      pa.string()))
    return table


def _report_appendix(skipped: dict, sheet: Optional[str]) -> str:
    """The audit's own sections after the study's report: the contact sheet and skipped images."""
    parts = []
    if sheet:
        parts.append("## Most and least exposed members\n\n" + sheet + "\n\n![exposed](plots/exposed.png)\n")
    if skipped:
        lines = [f"- `{s['id']}` ({role}): {s['reason']}" for role, items in skipped.items() for s in items]
        parts.append(f"## Skipped images ({len(lines)})\n\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)
