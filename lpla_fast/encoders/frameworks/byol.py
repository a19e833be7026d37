"""BYOL: the online branch predicts the momentum branch's projection of the other view."""

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

from ..base import Encoder


class BYOL(Encoder):
    def __init__(self, backbone, config, feature_dim):
        head = BYOLProjectionHead(feature_dim, 2 * feature_dim, config.proj_dim)
        super().__init__(backbone, head, config, feature_dim)
        self.predictor = BYOLPredictionHead(config.proj_dim, 2 * feature_dim, config.proj_dim)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.head_momentum = copy.deepcopy(head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def before_step(self, progress):
        m = cosine_schedule(int(progress * 1000), 1000, self.config.momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.head, self.head_momentum, m)

    def training_loss(self, view0, view1):
        p0 = self.predictor(self.embed(view0, "head"))
        p1 = self.predictor(self.embed(view1, "head"))
        with torch.no_grad():
            t0 = self.head_momentum(self.backbone_momentum(view0))
            t1 = self.head_momentum(self.backbone_momentum(view1))
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))
