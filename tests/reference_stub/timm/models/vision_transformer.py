"""timm.models.vision_transformer stand-in: Mlp only."""

from timm._stub import Mlp

__all__ = ["Mlp"]
