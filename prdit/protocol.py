"""`protocol`: the project's own conventions (`project`, the default) or the PRDiT paper code's (`paper`).

`protocol: paper` makes every stage follow the reference implementation (github Fredy-Zhang/PRDiT) where
it is unambiguous; docs/reproducing.md lists each convention with the reference's file and line. Stages
ask this module, never the raw key, so the one switch has one meaning everywhere.
"""

from __future__ import annotations

import math
from typing import Any

# facts of the reference implementation
PAPER_WEIGHTS_NAME = "resnet_50.pth"  # evaluations/README.md: from MedicalNet_pytorch_files2.tar.gz
# The archive as Tencent publishes it: its README links a Google Drive / Tencent Weiyun download and
# unzips it; the file behind the link is a .zip holding pretrain/resnet_50.pth (the reference's README
# writes .tar.gz; Tencent's README writes MedicalNet_pytorch_files.zip, projects using the link ...2.zip).
PAPER_WEIGHTS_ARCHIVE = "MedicalNet_pytorch_files2.zip"
# sha256 of the public 23-dataset ResNet-50 (resnet_50_23dataset.pth): never the paper's network
MEDICALNET_23DATASET_SHA256 = "ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e"
# The manual step, word for word in the fetch_weights rule's error, README.md and docs/reproducing.md.
MANUAL_WEIGHTS_STEP = (
    f"download {PAPER_WEIGHTS_ARCHIVE} from the Google Drive or Tencent Weiyun link in "
    "github.com/Tencent/MedicalNet's README, extract resnet_50.pth from its pretrain folder to the path "
    "in evaluate.weights, or set evaluate.url and evaluate.sha256 to a copy of that file"
)
PAPER_VAL_CASES = 200  # datasets/README.md: split_train_val.py --val-size 200
PAPER_REAL_N = 1000  # evaluations/fid.py --num_samples 1000 over the real set train.txt + val.txt
PAPER_STAGE2_GAIN = 0.1  # train.py: initialize_model_with_pretrained(..., gain=0.1)
PAPER_POS_FRACTION = 0.95  # models/utils.py: top positional frequency 0.95 * grid / 2


def name(p: Any) -> str:
    """The protocol a parameter set asks for ('project' when the key is absent)."""
    raw = getattr(p, "raw", None) or {}
    return str(raw.get("protocol", "project"))


def is_paper(p: Any) -> bool:
    return name(p) == "paper"


def preprocess_mode(p: Any) -> str:
    """`reference` under the paper protocol, otherwise preprocess.mode."""
    return "reference" if is_paper(p) else p.preprocess.mode


def pos_max_freq(input_size: int, stride: int = 8) -> float:
    """The reference's top positional frequency for a token grid of input_size / stride per axis."""
    return PAPER_POS_FRACTION * (input_size // stride) / 2


def paper_val_count(n: int) -> int:
    """Validation units of the reference split: 200, or a fifth of a dataset too small to spare 200."""
    if n < 2:
        return 0
    return PAPER_VAL_CASES if n > 2 * PAPER_VAL_CASES else max(1, math.floor(n / 5))
