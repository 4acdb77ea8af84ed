"""Build reference PRDiT models in a separate process (run by tests/unit/model/test_networks.py and the
fixture recorder).

usage: python probe.py REFDIR count  NAME SIZE [NAME SIZE ...]   -> JSON {name@size: {params, shapes}}
       python probe.py REFDIR forward NAME SIZE OUT.pt           -> random weights, input, t and output
REFDIR holds the reference's models/ package (extracted with git show); this folder provides timm.
"""

import json
import sys
import types
from pathlib import Path

import torch


def build(name, size):
    """The reference's own model; its models/ package (and this folder, for timm) must be on sys.path."""
    if "util" not in sys.modules:  # the reference's util.py pulls in wandb; models only need this helper
        util = types.ModuleType("util")
        util.requires_grad = lambda model, flag=True: [p.requires_grad_(flag) for p in model.parameters()]
        sys.modules["util"] = util
    from models import PRDiT_models

    return PRDiT_models[name](
        input_size=size, in_channels=1, num_classes=1, learn_sigma=True, flash_attn=False
    )


def counts(pairs):
    out = {}
    for name, size in pairs:
        with torch.device("meta"):
            model = build(name, int(size))
        out[f"{name}@{size}"] = {
            "params": sum(p.numel() for p in model.parameters()),
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        }
    return out


def main():
    ref_dir, mode = sys.argv[1], sys.argv[2]
    sys.path[:0] = [ref_dir, str(Path(__file__).parent)]
    if mode == "count":
        args = sys.argv[3:]
        print(json.dumps(counts(zip(args[::2], args[1::2]))))
    elif mode == "forward":
        name, size, dest = sys.argv[3], int(sys.argv[4]), sys.argv[5]
        torch.manual_seed(0)
        model = build(name, size).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
            x = torch.randn(2, 1, size, size, size) * 0.5
            t = torch.tensor([17, 803])
            y = model(x, t)
        torch.save({"state_dict": model.state_dict(), "x": x, "t": t, "y": y}, dest)


if __name__ == "__main__":
    main()
