"""One real CPU training step of a stage, its peak memory read from the kernel (run by
tests/unit/plan/test_cost.py).

usage: python rss_step.py OVERRIDES_JSON STAGE MICRO  -> {"delta": bytes}: VmHWM during the second step minus
VmRSS before it (model, optimizer state and the first step's leftovers already resident). Run it with
MALLOC_MMAP_THRESHOLD_ fixed so freed tensors go back to the kernel and the high-water mark is the peak.
"""

import json
import sys

import torch

from prdit.config import load
from prdit.diffusion.ian import loss as ian_loss
from prdit.plan.cost import stage_model


def status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    p = load(["params.yaml"], overrides=json.loads(sys.argv[1]))
    stage, micro = sys.argv[2], int(sys.argv[3])
    model = stage_model(p, stage)
    size = model.input_size
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4, foreach=False)

    def step() -> None:
        x0 = torch.randn(micro, 1, size, size, size)
        t = torch.randint(0, p.diffusion.timesteps, (micro,))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what the plan assumes (protocol project)
            loss, _ = ian_loss(model, x0, t=t, noise=torch.randn_like(x0) * p.diffusion.noise_std)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # AdamW's state now exists, as from the second step of a run on
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = status("VmRSS:")
    step()
    print(json.dumps({"delta": status("VmHWM:") - before}))


if __name__ == "__main__":
    main()
