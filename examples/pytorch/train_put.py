#!/usr/bin/python3
"""Trains a model in PyTorch and keeps its checkpoints in O3 with `o3ckpt put`: after each epoch
a checkpoint directory (model.safetensors, optimizer.pt, rng.pt, trainer_state.json) is put into the run,
with a CID, signed sidecars (with AKAVE_PRIVATE_KEY set), the manifest and `latest`; at start the
run's `latest` is fetched, verified, with `o3ckpt get` and training resumes from it.

    train_put.py --run o3://bucket/runs/r1 --data /mnt/data [--epochs 5] [--samples 60000]

Each epoch's sample order comes from the seed and the epoch, so a run stopped and started again
ends with the same weights, bit for bit on the CPU, as one that never stopped. `--o3ckpt` names
the command (default `o3ckpt`; split like a shell would). Exit status 1 when a command fails.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import st_file  # noqa: E402
from fashion_mnist import load_split, to_input  # noqa: E402
from models import build_model  # noqa: E402

# `o3ckpt get` when the run has no checkpoint yet (lib/cli/exit-codes.ts: notFound).
NOT_FOUND = 66


def o3ckpt(cmd, *args, check=True):
    r = subprocess.run([*cmd, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"train_put.py: {' '.join(args[:1])} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def resume(cmd, run, work):
    """(model state, optimizer state, RNG state, trainer state) of the run's latest checkpoint, or None."""
    out = os.path.join(work, "resume")
    r = o3ckpt(cmd, "get", run, "latest", "-o", out, check=False)
    if r.returncode == NOT_FOUND:
        return None
    if r.returncode != 0:
        sys.exit(f"train_put.py: cannot resume from {run}: {r.stderr.strip()}")
    tensors, _ = st_file.load(os.path.join(out, "model.safetensors"))
    optimizer = torch.load(os.path.join(out, "optimizer.pt"))
    rng = torch.load(os.path.join(out, "rng.pt"))
    with open(os.path.join(out, "trainer_state.json")) as f:
        state = json.load(f)
    return tensors, optimizer, rng, state


def save(directory, model, optimizer, state):
    """The checkpoint directory: what each framework writes, in a layout of this script's choosing."""
    os.makedirs(directory)
    st_file.save(os.path.join(directory, "model.safetensors"), model.state_dict(), {"format": "pt"})
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    # Dropout draws from the global generator: without its state a resumed run would diverge.
    torch.save(torch.get_rng_state(), os.path.join(directory, "rng.pt"))
    with open(os.path.join(directory, "trainer_state.json"), "w") as f:
        json.dump(state, f, sort_keys=True)


def main(argv):
    p = argparse.ArgumentParser(prog="train_put.py", description="train in PyTorch, checkpoint to O3 with o3ckpt put")
    p.add_argument("--run", required=True, help="o3://bucket/prefix/run")
    p.add_argument("--data", required=True, help="Fashion-MNIST idx files, as o3train's --data (a mount of O3 works)")
    p.add_argument("--epochs", type=int, default=5, help="train until this many epochs are done (default 5)")
    p.add_argument("--samples", type=int, default=60000, help="train on the first N images (default all)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--o3ckpt", default="o3ckpt", help="the o3ckpt command (default o3ckpt)")
    a = p.parse_args(argv)
    cmd = shlex.split(a.o3ckpt)
    torch.set_num_threads(1)

    images, labels = load_split(a.data, "train")
    images, labels = to_input(images[: a.samples]), labels[: a.samples]
    torch.manual_seed(a.seed)
    model = build_model("mlp", {"hidden": 64})
    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    work = tempfile.mkdtemp(prefix="train_put-")
    try:
        state = {"epoch": 0, "step": 0}
        found = resume(cmd, a.run, work)
        if found:
            tensors, opt_state, rng, state = found
            model.load_state_dict(tensors)
            optimizer.load_state_dict(opt_state)
            torch.set_rng_state(rng)
            print(json.dumps({"event": "resumed", **state}), flush=True)
        while state["epoch"] < a.epochs:
            epoch = state["epoch"]
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(a.seed * 1000 + epoch))
            model.train()
            total = 0.0
            for i in range(0, len(order), a.batch):
                idx = order[i : i + a.batch]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                state["step"] += 1
            state["epoch"] = epoch + 1
            directory = os.path.join(work, f"epoch-{epoch + 1}")
            save(directory, model, optimizer, state)
            r = o3ckpt(cmd, "--json", "put", directory, a.run, "--step", str(state["step"]), "--epoch", str(epoch + 1),
                       "--meta", "model=mlp", "--meta", "framework=pytorch", "--data", a.data)
            entry = json.loads(r.stdout)
            shutil.rmtree(directory)
            print(json.dumps({"event": "epoch", "epoch": epoch + 1, "step": state["step"], "loss": total / len(order),
                              "checkpoint": entry["name"], "cid": entry["cid"]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
