"""PRDiT networks: stage-1 local denoiser, stage-2 global residual DiT, stage-3 highres branch."""

from prdit.model.arch import Arch
from prdit.model.backbone import PRDiT
from prdit.model.files import (
    content_hash,
    from_file_dict,
    from_reference_state_dict,
    load,
    save,
    to_file_dict,
    unwrap,
)
from prdit.model.highres import HighResPRDiT
from prdit.model.registry import VARIANTS, create

__all__ = [
    "Arch",
    "PRDiT",
    "HighResPRDiT",
    "VARIANTS",
    "create",
    "save",
    "load",
    "to_file_dict",
    "from_file_dict",
    "from_reference_state_dict",
    "unwrap",
    "content_hash",
]
