"""`lpla audit`: audit an encoder (a `lpla train` folder, a timm / torchvision model or any
nn.Module factory, with your weights) on your own member and non-member images, with the
global attacks, or LiRA and RMIA against reference encoders (yours, or trained here locally or
on Ray). One module per stage: `encoder_spec` (the target and its preprocessing),
`candidates` (image caches and the candidate pool), `references` (reference folders, masks,
seeds), `run` (the pipeline) and `contact_sheet` (the most and least exposed members)."""

from .run import AuditConfig, run_audit

__all__ = ["AuditConfig", "run_audit"]
