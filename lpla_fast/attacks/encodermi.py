"""EncoderMI (Liu et al., CCS 2021): membership from how similar a sample's views are.

An encoder trained on a sample tends to map that sample's augmented views close
together. The features are the K(K-1)/2 pairwise cosine similarities of the K views'
embeddings (`ops.view_cosine`), so every variant needs K >= 2. The three variants are
trained on labelled data (the shadow encoder's members and non-members, or in audit mode
the target's calibration sets):
- EncoderMI-T: a threshold on the mean similarity (direction and threshold learned);
- EncoderMI-V: an MLP (scikit-learn) on the similarity vector sorted in decreasing order;
  it needs the same K at fit and score time;
- EncoderMI-S: a small DeepSets model (per-element MLP, mean pooling, MLP) on the set of
  similarities; it accepts any K >= 2.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from .. import ops
from .base import Attack, AttackerKnowledge, best_threshold, fit_orientation


@contextmanager
def _one_thread():
    """Tiny models train far faster on one thread than with intra-op threads competing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def similarity_features(views) -> np.ndarray:
    """(N, K(K-1)/2) float64 pairwise cosine similarities of each sample's views."""
    return ops.view_cosine(views).to(torch.float64).cpu().numpy()


class _EncoderMIBase(Attack):
    min_views = 2
    labelled_data_only = True

    def _training_features(self, knowledge: AttackerKnowledge):
        members, nonmembers = knowledge.labelled_sets(self.name)
        for name, views in (("members", members), ("non-members", nonmembers)):
            if views.shape[1] < self.min_views:
                raise ValueError(f"{self.name} needs K >= 2 views per sample; the {name} have K={views.shape[1]}")
        self.dim_ = knowledge.target_dim()
        return similarity_features(members), similarity_features(nonmembers)

    def _fit_threshold(self, member_scores: np.ndarray, nonmember_scores: np.ndarray) -> None:
        scores = np.concatenate([member_scores, nonmember_scores])
        labels = np.concatenate([np.ones(member_scores.size, bool), np.zeros(nonmember_scores.size, bool)])
        self.threshold_ = best_threshold(scores, labels)

    def score(self, views) -> np.ndarray:
        return self._score_features(similarity_features(self._check(views)))


class EncoderMIThreshold(_EncoderMIBase):
    """EncoderMI-T: the mean pairwise similarity, oriented and thresholded on labelled data."""

    name = "encodermi-t"
    label = "EncoderMI-T"
    levels = ("shadow", "audit")
    takes_p = False

    def fit(self, knowledge: AttackerKnowledge) -> "EncoderMIThreshold":
        f_in, f_out = self._training_features(knowledge)
        self.sign_, self.threshold_ = fit_orientation(f_in.mean(axis=1), f_out.mean(axis=1))
        return self

    def _score_features(self, features: np.ndarray) -> np.ndarray:
        return self.sign_ * features.mean(axis=1)

    def _state(self) -> dict:
        return {"dim": self.dim_, "sign": self.sign_, "threshold": self.threshold_}

    def _set_state(self, state: dict) -> None:
        self.dim_, self.sign_, self.threshold_ = state["dim"], float(state["sign"]), float(state["threshold"])


class EncoderMIVector(_EncoderMIBase):
    """EncoderMI-V: an MLP on the sorted similarity vector; scores are the MLP's logit.

    Features are standardized with the training set's mean and std; scoring runs the
    stored weights in numpy, so a reloaded attack gives the same scores.
    """

    name = "encodermi-v"
    label = "EncoderMI-V"
    levels = ("shadow", "audit")
    takes_p = False

    def __init__(self, hidden: int = 64, max_iter: int = 500, alpha: float = 1e-3, seed: int = 0):
        self.hidden = int(hidden)
        self.max_iter = int(max_iter)
        self.alpha = float(alpha)
        self.seed = int(seed)

    def fit(self, knowledge: AttackerKnowledge) -> "EncoderMIVector":
        f_in, f_out = self._training_features(knowledge)
        x = -np.sort(-np.concatenate([f_in, f_out]), axis=1)
        y = np.concatenate([np.ones(len(f_in)), np.zeros(len(f_out))])
        self.views_ = _views_from_pairs(x.shape[1])
        self.mean_, self.std_ = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-8)
        mlp = MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, max_iter=self.max_iter,
                            random_state=self.seed)
        with warnings.catch_warnings():  # max_iter is a deliberate time cap, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp.fit((x - self.mean_) / self.std_, y)
        self.weights_ = [w.astype(np.float64) for w in mlp.coefs_]
        self.biases_ = [b.astype(np.float64) for b in mlp.intercepts_]
        self._fit_threshold(self._score_features(f_in), self._score_features(f_out))
        return self

    def _score_features(self, features: np.ndarray) -> np.ndarray:
        if features.shape[1] != self.mean_.size:
            raise ValueError(f"{self.name} was fitted with K={self.views_} views per sample; got "
                             f"K={_views_from_pairs(features.shape[1])} (EncoderMI-V needs the same K)")
        h = (-np.sort(-features, axis=1) - self.mean_) / self.std_
        for w, b in zip(self.weights_[:-1], self.biases_[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return (h @ self.weights_[-1] + self.biases_[-1])[:, 0]

    def _state(self) -> dict:
        return {"dim": self.dim_, "views": self.views_, "threshold": self.threshold_,
                "mean": self.mean_.tolist(), "std": self.std_.tolist(),
                "weights": [w.tolist() for w in self.weights_], "biases": [b.tolist() for b in self.biases_]}

    def _set_state(self, state: dict) -> None:
        self.dim_, self.views_, self.threshold_ = state["dim"], int(state["views"]), float(state["threshold"])
        self.mean_, self.std_ = np.asarray(state["mean"], np.float64), np.asarray(state["std"], np.float64)
        self.weights_ = [np.asarray(w, np.float64).reshape(len(w), -1) for w in state["weights"]]
        self.biases_ = [np.asarray(b, np.float64) for b in state["biases"]]


class EncoderMISet(_EncoderMIBase):
    """EncoderMI-S: DeepSets on the set of similarities, rho(mean_j phi(c_j)).

    phi and rho are two-layer ReLU MLPs; trained with Adam on the class-balanced binary
    cross-entropy for `steps` steps of `batch_size` samples on the CPU (seeded). Scores
    are rho's logit. The step size 3e-3 keeps the fit steady: at 1e-2, changing the shadow's
    embeddings by one part in 10^3 moved the target AUC by up to 0.054 (0.016 on average over
    the default run's 5 frameworks x 2 seeds, head, K = 8), at 3e-3 by up to 0.008 (0.003),
    at a mean AUC of 0.610 against 0.604; full-batch steps were less steady, not more.
    """

    name = "encodermi-s"
    label = "EncoderMI-S"
    levels = ("shadow", "audit")
    takes_p = False

    def __init__(self, hidden: int = 32, steps: int = 300, batch_size: int = 256, lr: float = 3e-3,
                 weight_decay: float = 1e-4, seed: int = 0):
        self.hidden = int(hidden)
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)

    def _model(self) -> torch.nn.ModuleDict:
        h = self.hidden
        return torch.nn.ModuleDict({
            "phi": torch.nn.Sequential(torch.nn.Linear(1, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU()),
            "rho": torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 1)),
        })

    @staticmethod
    def _forward(model, x: torch.Tensor) -> torch.Tensor:
        pooled = model["phi"](x.unsqueeze(-1)).mean(dim=1)
        return model["rho"](pooled).squeeze(-1)

    def fit(self, knowledge: AttackerKnowledge) -> "EncoderMISet":
        f_in, f_out = self._training_features(knowledge)
        values = np.concatenate([f_in.reshape(-1), f_out.reshape(-1)])
        self.center_, self.scale_ = float(values.mean()), float(max(values.std(), 1e-8))
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
            torch.manual_seed(self.seed)
            model = self._model()
        batches = torch.Generator().manual_seed(self.seed)
        x = torch.from_numpy((np.concatenate([f_in, f_out]) - self.center_) / self.scale_).float()
        y = torch.cat([torch.ones(len(f_in)), torch.zeros(len(f_out))])
        # Balance the classes so the logit's zero is a sensible threshold too.
        pos_weight = torch.tensor(len(f_out) / len(f_in))
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        with _one_thread():
            for _ in range(self.steps):
                rows = torch.randint(0, len(x), (min(self.batch_size, len(x)),), generator=batches)
                optimizer.zero_grad()
                loss_fn(self._forward(model, x[rows]), y[rows]).backward()
                optimizer.step()
        self.parameters_ = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._fit_threshold(self._score_features(f_in), self._score_features(f_out))
        return self

    def _score_features(self, features: np.ndarray) -> np.ndarray:
        model = self._model()
        model.load_state_dict(self.parameters_)
        with torch.no_grad(), _one_thread():
            x = torch.from_numpy((features - self.center_) / self.scale_).float()
            return self._forward(model, x).numpy().astype(np.float64)

    def _state(self) -> dict:
        return {"dim": self.dim_, "threshold": self.threshold_, "center": self.center_, "scale": self.scale_,
                "parameters": {k: v.tolist() for k, v in self.parameters_.items()}}

    def _set_state(self, state: dict) -> None:
        self.dim_, self.threshold_ = state["dim"], float(state["threshold"])
        self.center_, self.scale_ = float(state["center"]), float(state["scale"])
        self.parameters_ = {k: torch.tensor(v, dtype=torch.float32) for k, v in state["parameters"].items()}


def _views_from_pairs(pairs: int) -> int:
    """K such that K(K-1)/2 == pairs."""
    return int(round((1 + np.sqrt(1 + 8 * pairs)) / 2))
