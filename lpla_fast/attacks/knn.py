"""Nearest-neighbour attacks with FAISS.

A sample is represented by the mean of its K view embeddings. Its raw statistic is the
mean similarity to its k nearest neighbours in a bank of embeddings from the same encoder:
- metric "cosine": inner product of L2-normalized embeddings (IndexFlatIP / IVF inner product);
- metric "l2": minus the Euclidean distance (IndexFlatL2 / IVF L2).
Bank and calibration by knowledge level:
- "shadow": the target bank is target_reference (known non-members); the direction and
  threshold are learned on the shadow encoders' members and non-members, each scored
  against its own bank (shadow_reference, more_shadows[i].reference).
- "audit": the bank is target_training (known members); the statistic is the similarity
  to the nearest training samples (k=1 is the nearest one) and its direction and
  threshold are learned on calibration_members / calibration_nonmembers, which must be
  disjoint from target_training (a sample in its own bank would match itself).
Reference-only knowledge cannot orient the statistic, and is refused.

index "flat" is exact; "ivf" is IndexIVFFlat with `nlist` lists, `nprobe` searched (exact
when nprobe == nlist). On a machine where faiss has GPU support and sees a GPU, the index
is moved to the GPU when use_gpu is "auto" or True.
"""

from __future__ import annotations

import base64

import faiss
import numpy as np
import torch

from .base import Attack, AttackerKnowledge, fit_orientation

METRICS = ("cosine", "l2")
INDEXES = ("flat", "ivf")


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def sample_embeddings(views, metric: str) -> np.ndarray:
    """(N, D) float32 view-mean embeddings, L2-normalized for the cosine metric."""
    x = views.to(torch.float32).mean(dim=1)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)


def build_index(bank: np.ndarray, metric: str = "cosine", index: str = "flat", nlist: int = 16,
                nprobe: int = 4, use_gpu="auto"):
    """A FAISS index over bank (M, D) float32."""
    d = bank.shape[1]
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if index == "flat":
        built = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    else:
        if bank.shape[0] < nlist:
            raise ValueError(f"an IVF index with nlist={nlist} needs at least {nlist} bank vectors, got {bank.shape[0]}")
        quantizer = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
        built = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
        built.train(bank)
        built.nprobe = min(nprobe, nlist)
    built.add(bank)
    if use_gpu is True and not gpu_available():
        raise RuntimeError("use_gpu=True, but faiss has no GPU support or sees no GPU")
    return _to_gpu(built) if use_gpu and gpu_available() else built


def _to_gpu(index):
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    gpu_index.resources_ = resources  # the resources must live as long as the index
    return gpu_index


def neighbour_similarity(index, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """(N,) float64 mean similarity of each query to its k nearest bank vectors."""
    distances, ids = index.search(queries, k)
    if (ids < 0).any():
        raise ValueError(f"the index returned fewer than k={k} neighbours; use a larger bank or nprobe")
    # IndexFlatL2 / IVF L2 return squared distances.
    sims = distances if metric == "cosine" else -np.sqrt(np.maximum(distances, 0.0))
    return sims.astype(np.float64).mean(axis=1)


class KNNAttack(Attack):
    """Similarity to the k nearest neighbours in a bank, oriented on labelled data.

    Args:
        k: neighbours averaged.
        metric: "cosine" or "l2".
        index: "flat" (exact) or "ivf".
        nlist, nprobe: IVF lists and lists searched.
        use_gpu: "auto" (a GPU index when available), True (required) or False.

    Fitted: mode_, sign_, threshold_, dim_, and the target bank's index (index_).
    """

    name = "knn"
    label = "kNN (FAISS)"
    levels = ("shadow", "audit")
    takes_p = False

    def __init__(self, k: int = 10, metric: str = "cosine", index: str = "flat", nlist: int = 16, nprobe: int = 4,
                 use_gpu="auto"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
        if k < 1 or nlist < 1 or nprobe < 1:
            raise ValueError(f"k, nlist and nprobe must be >= 1, got k={k}, nlist={nlist}, nprobe={nprobe}")
        self.k, self.metric, self.index = int(k), metric, index
        self.nlist, self.nprobe, self.use_gpu = int(nlist), int(nprobe), use_gpu

    def _index(self, bank_views, name: str):
        bank = sample_embeddings(bank_views, self.metric)
        if bank.shape[0] < self.k:
            raise ValueError(f"{name} has {bank.shape[0]} samples, fewer than k={self.k} neighbours")
        return build_index(bank, self.metric, self.index, self.nlist, self.nprobe, self.use_gpu)

    def _raw(self, index, views) -> np.ndarray:
        return neighbour_similarity(index, sample_embeddings(views, self.metric), self.k, self.metric)

    def fit(self, knowledge: AttackerKnowledge) -> "KNNAttack":
        encoders = knowledge.labelled_encoders(self.name)
        if knowledge.level == "shadow":
            (target_bank,) = knowledge.require("shadow_reference", "target_reference", attack=self.name)[1:]
            self.index_ = self._index(target_bank, "target_reference")
            banks = [self._index(e.reference, "shadow_reference" if i == 0 else f"more_shadows[{i - 1}].reference")
                     for i, e in enumerate(encoders)]  # each shadow's labelled samples against its own bank
        else:
            (target_bank,) = knowledge.require("target_training", attack=self.name)
            self.index_ = self._index(target_bank, "target_training")
            banks = [self.index_]
        self.mode_ = knowledge.level
        self.dim_ = knowledge.target_dim()
        self.sign_, self.threshold_ = fit_orientation(
            np.concatenate([self._raw(bank, e.members) for bank, e in zip(banks, encoders)]),
            np.concatenate([self._raw(bank, e.nonmembers) for bank, e in zip(banks, encoders)]))
        return self

    def score(self, views) -> np.ndarray:
        return self.sign_ * self._raw(self.index_, self._check(views))

    def _state(self) -> dict:
        index = self.index_
        if "Gpu" in type(index).__name__:
            index = faiss.index_gpu_to_cpu(index)
        blob = base64.b64encode(faiss.serialize_index(index).tobytes()).decode("ascii")
        return {"mode": self.mode_, "dim": self.dim_, "sign": self.sign_, "threshold": self.threshold_,
                "index": blob}

    def _set_state(self, state: dict) -> None:
        self.mode_, self.dim_ = state["mode"], state["dim"]
        self.sign_, self.threshold_ = float(state["sign"]), float(state["threshold"])
        index = faiss.deserialize_index(np.frombuffer(base64.b64decode(state["index"]), dtype=np.uint8))
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = min(self.nprobe, self.nlist)
        self.index_ = _to_gpu(index) if self.use_gpu and gpu_available() else index
