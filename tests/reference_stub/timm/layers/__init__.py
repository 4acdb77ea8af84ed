"""timm.layers stand-in: SwiGLU only."""

from timm._stub import SwiGLU

__all__ = ["SwiGLU"]
