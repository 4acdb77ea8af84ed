"""Evaluation of generated CT: 3D FID and MMD on MedicalNet ResNet-50 features, MS-SSIM diversity, report."""

from prdit.evaluate.extractor import load_extractor
from prdit.evaluate.fid import fid
from prdit.evaluate.mmd import mmd
from prdit.evaluate.ms_ssim import ms_ssim

__all__ = ["load_extractor", "fid", "mmd", "ms_ssim"]
