"""SimSiam: BYOL without the momentum encoder; a stop-gradient on the target projection."""

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from ..base import Encoder


class SimSiam(Encoder):
    def __init__(self, backbone, config, feature_dim):
        head = SimSiamProjectionHead(feature_dim, feature_dim, config.proj_dim)
        super().__init__(backbone, head, config, feature_dim)
        bottleneck = max(8, config.proj_dim // 4)
        self.predictor = SimSiamPredictionHead(config.proj_dim, bottleneck, config.proj_dim)
        self.criterion = NegativeCosineSimilarity()

    def training_loss(self, view0, view1):
        z0, z1 = self.embed(view0, "head"), self.embed(view1, "head")
        p0, p1 = self.predictor(z0), self.predictor(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
