"""SimCLR: two views, a projection head and the NT-Xent loss over the batch."""

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from ..base import Encoder


class SimCLR(Encoder):
    def __init__(self, backbone, config, feature_dim):
        head = SimCLRProjectionHead(feature_dim, feature_dim, config.proj_dim)
        super().__init__(backbone, head, config, feature_dim)
        self.criterion = NTXentLoss(temperature=config.temperature)

    def training_loss(self, view0, view1):
        return self.criterion(self.embed(view0, "head"), self.embed(view1, "head"))
