"""MoCo v2: queries from the online encoder, keys from a momentum copy, a queue of past keys
as negatives (lightly's NT-Xent memory bank)."""

import copy

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

from ..base import Encoder


class MoCo(Encoder):
    def __init__(self, backbone, config, feature_dim):
        head = MoCoProjectionHead(feature_dim, feature_dim, config.proj_dim)
        super().__init__(backbone, head, config, feature_dim)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.head_momentum = copy.deepcopy(head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = NTXentLoss(temperature=config.temperature,
                                    memory_bank_size=(config.queue_size, config.proj_dim))

    def before_step(self, progress):
        m = cosine_schedule(int(progress * 1000), 1000, self.config.momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.head, self.head_momentum, m)

    def training_loss(self, view0, view1):
        query = self.embed(view0, "head")
        with torch.no_grad():
            key = self.head_momentum(self.backbone_momentum(view1))
        return self.criterion(query, key)
