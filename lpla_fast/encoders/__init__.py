"""Contrastive encoders: backbones, frameworks, training, checkpoints, view queries, feature
quality, and loading users' own encoders."""

from .backbones import BACKBONES, make_backbone
from .base import Encoder
from .checkpoint import load_encoder, save_encoder
from .config import FRAMEWORKS, TrainConfig
from .frameworks import build_encoder
from .loading import backbone_state_dict, load_pretrained
from .pixels import CacheRows
from .quality import extract_features, feature_quality
from .training import resolve_device, train_encoder
from .views import head_views, query_split_views, query_views

__all__ = [
    "BACKBONES", "CacheRows", "FRAMEWORKS", "Encoder", "TrainConfig", "backbone_state_dict", "build_encoder",
    "extract_features", "feature_quality", "head_views", "load_encoder", "load_pretrained", "make_backbone",
    "query_split_views", "query_views", "resolve_device", "save_encoder", "train_encoder",
]
