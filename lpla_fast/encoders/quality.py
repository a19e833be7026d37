"""Feature quality of a frozen encoder: linear-probe and kNN accuracy on labelled data."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Encoder, check_output, evaluating


def extract_features(encoder: Encoder, images: Tensor, output: str = "backbone", batch_size: int = 512,
                     device=None) -> np.ndarray:
    """(N, D) float32 embeddings of the clean images, in eval mode."""
    check_output(output)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    with evaluating(encoder):
        parts = [encoder.embed(images[i:i + batch_size].to(device, torch.float32), output).float().cpu()
                 for i in range(0, len(images), batch_size)]
    return torch.cat(parts).numpy()


def feature_quality(encoder: Encoder, train_images: Tensor, train_labels, test_images: Tensor, test_labels,
                    output: str = "backbone", knn_k: int = 20) -> dict:
    """Accuracy on the test split of (a) a logistic regression on standardized frozen features
    fit on the train split and (b) a cosine kNN vote (k = knn_k) over the train split.

    Returns dict(linear_probe=float, knn=float, chance=float).
    """
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    if len(y_train) != len(train_images) or len(y_test) != len(test_images):
        raise ValueError("labels and images differ in length")
    return probe_accuracy(extract_features(encoder, train_images, output), y_train,
                          extract_features(encoder, test_images, output), y_test, knn_k)


def probe_accuracy(x_train: np.ndarray, y_train, x_test: np.ndarray, y_test, knn_k: int = 20) -> dict:
    """The two probes of `feature_quality` on given (N, D) features (e.g. defended ones)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError("labels and features differ in length")
    if len(np.unique(y_train)) < 2:
        raise ValueError("the probe train split needs at least two classes")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    knn = KNeighborsClassifier(n_neighbors=min(knn_k, len(y_train)), metric="cosine").fit(x_train, y_train)
    return {
        "linear_probe": float(probe.score(x_test, y_test)),
        "knn": float(knn.score(x_test, y_test)),
        "chance": float(np.bincount(y_test).max() / len(y_test)),
    }
