#!/usr/bin/python3
"""Writes a PyTorch model's state_dict() as safetensors, for `o3train --init FILE`.

    save_init.py OUT --model cnn|mlp|resnet [--seed N]     # PyTorch's own initialisation
    save_init.py OUT --from CHECKPOINT [--model NAME]      # a checkpoint's model, re-saved by PyTorch

The file holds the bare state_dict() names (`conv1.weight`, ...) that PyTorch code produces, and
records the model (and, with --from, its input) in its metadata as an o3train checkpoint does.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import st_file  # noqa: E402
from checkpoint import failure, load_model, recording_metadata  # noqa: E402
from models import build_model, resolve_config  # noqa: E402


def main(argv):
    p = argparse.ArgumentParser(prog="save_init.py", description="write PyTorch weights for o3train --init")
    p.add_argument("out", help="the safetensors file to write")
    p.add_argument("--model", choices=["cnn", "mlp", "resnet"], help="the model (required without --from)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for a fresh initialisation (default 0)")
    p.add_argument("--from", dest="source", metavar="CHECKPOINT", help="take the weights from this safetensors file")
    a = p.parse_args(argv)
    input_record = None
    try:
        if a.source:
            model, name, config, _, input_record = load_model(a.source, a.model)
        elif a.model:
            torch.manual_seed(a.seed)
            name, config = a.model, resolve_config(a.model)
            model = build_model(name, config)
        else:
            p.error("pass --model cnn, mlp or resnet, or --from CHECKPOINT")
    except (OSError, ValueError) as err:
        return failure("save_init.py", err)
    st_file.save(a.out, model.state_dict(), recording_metadata(name, config, input_record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
