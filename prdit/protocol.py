"""`protocol`: the project's own conventions (`project`, the default) or the PRDiT paper code's (`paper`).

`protocol: paper` makes every stage follow the reference implementation (github Fredy-Zhang/PRDiT) where
it is unambiguous; docs/reproducing.md lists each convention with the reference's file and line. Every
effect of the switch is a field of `Conventions`, declared once in CONVENTIONS below and resolved when the
parameters load (`Params.conventions`); stages read that object, never the raw key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of the parameters' import (the Snakefile reads them)
    from prdit.precision import Precision

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


@dataclass(frozen=True)
class Conventions:
    """What `protocol:` decides, stage by stage (docs/reproducing.md gives each paper value's source)."""

    name: str  # project | paper
    preprocess_recipe: (
        str | None
    )  # "reference": the paper code's recipe whatever preprocess.mode; None: the mode
    paper_split: bool  # split: PAPER_VAL_CASES held out as val, no test (else split.*_fraction)
    stage2_gain: float | None  # stage 2: the DiT path re-initialised with this Xavier gain (None: as built)
    grid_pos_freq: bool  # top positional frequency PAPER_POS_FRACTION * grid / 2 (else the registry's)
    paper_numerics: bool  # CUDA numerics of the reference (prdit.precision): fp32 + bf16 attention kernels
    local_final_weights: (
        str  # what stage 1's model.pt holds (and stage 2 freezes): "ema" or "online" (non-EMA)
    )
    sampler_grid: str  # the sampler's timestep grid: "project" or "reference"
    extractor_axes: str  # axis order of volumes entering the feature extractor: "zyx" or "xyz"
    real_set_n: int | None  # the real set: the first real_set_n of train + val (None: train)
    all_generated_pairs: bool  # MS-SSIM over every generated pair (else evaluate.ms_ssim_pairs)
    paper_weights: bool  # evaluate only with the paper's MedicalNet (the 23-dataset file refused)

    def pos_max_freq(self, input_size: int, stride: int = 8) -> float | None:
        """The positional code's top frequency for stages 2 and 3 (None: the model's own)."""
        return pos_max_freq(input_size, stride) if self.grid_pos_freq else None

    @property
    def training(self) -> Precision:
        """What `prdit train` computes in on CUDA."""
        from prdit import precision

        return precision.training(self.paper_numerics)

    @property
    def sampling(self) -> Precision:
        """What `prdit sample` computes in on CUDA."""
        from prdit import precision

        return precision.sampling(self.paper_numerics)

    def final_weights(self, stage: str) -> str:
        """What a stage's model.pt holds: its EMA weights, or stage 1's online (non-EMA) weights under the paper."""
        return self.local_final_weights if stage == "local" else "ema"


CONVENTIONS: dict[str, Conventions] = {
    "project": Conventions(
        name="project",
        preprocess_recipe=None,
        paper_split=False,
        stage2_gain=None,
        grid_pos_freq=False,
        paper_numerics=False,
        local_final_weights="ema",
        sampler_grid="project",
        extractor_axes="zyx",
        real_set_n=None,
        all_generated_pairs=False,
        paper_weights=False,
    ),
    "paper": Conventions(
        name="paper",
        preprocess_recipe="reference",
        paper_split=True,
        stage2_gain=PAPER_STAGE2_GAIN,
        grid_pos_freq=True,
        paper_numerics=True,
        local_final_weights="online",
        sampler_grid="reference",
        extractor_axes="xyz",
        real_set_n=PAPER_REAL_N,
        all_generated_pairs=True,
        paper_weights=True,
    ),
}


def pos_max_freq(input_size: int, stride: int = 8) -> float:
    """The reference's top positional frequency for a token grid of input_size / stride per axis."""
    return PAPER_POS_FRACTION * (input_size // stride) / 2


def paper_val_count(n: int) -> int:
    """Validation units of the reference split: 200, or a fifth of a dataset too small to spare 200."""
    if n < 2:
        return 0
    return PAPER_VAL_CASES if n > 2 * PAPER_VAL_CASES else max(1, math.floor(n / 5))
