"""Barlow Twins: push the cross-correlation of the two views' projections to the identity."""

from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from ..base import Encoder


class BarlowTwins(Encoder):
    def __init__(self, backbone, config, feature_dim):
        # The redundancy-reduction term wants a wider projection than the other frameworks.
        dim = max(4 * config.proj_dim, 256)
        head = BarlowTwinsProjectionHead(feature_dim, dim, dim)
        super().__init__(backbone, head, config, feature_dim)
        self.criterion = BarlowTwinsLoss()

    def training_loss(self, view0, view1):
        return self.criterion(self.embed(view0, "head"), self.embed(view1, "head"))
