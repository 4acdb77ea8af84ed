"""PRDiT pipeline: pixel-level residual diffusion transformers for 3D chest CT."""

__version__ = "0.1.0"
