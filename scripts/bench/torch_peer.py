"""Python peer for the trainer benchmark: the same CNN, data, batch size, optimizer and threads as
the native trainer (cpp/models.cpp "cnn" defaults, Adam lr 1e-3, images scaled to [-1, 1]),
trained with Debian's python3-torch. Prints one JSON line.

Run with /usr/bin/python3 and OPENBLAS_NUM_THREADS=1 (as the native trainer runs).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

# The models and data preparation that evaluate.py uses: the native trainer's, in PyTorch.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "pytorch"))

from fashion_mnist import load_split, to_input as scaled  # noqa: E402
from models import build_model  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="0: torch's default")
    p.add_argument("--steps", type=int, default=0, help="0: one full epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluate", action="store_true")
    a = p.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    images, labels = load_split(a.root, "train")
    model = build_model("cnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(images))
    batches = (len(order) + a.batch - 1) // a.batch
    if a.steps:
        batches = min(batches, a.steps)

    model.train()
    loss_sum, samples = 0.0, 0
    start = time.perf_counter()
    for b in range(batches):
        idx = order[b * a.batch : (b + 1) * a.batch]
        x, y = scaled(images[idx]), labels[idx]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(idx)
        samples += len(idx)
    seconds = time.perf_counter() - start
    out = {"samples": samples, "seconds": seconds, "samplesPerSecond": samples / seconds, "loss": loss_sum / samples}

    if a.evaluate:
        test_images, test_labels = load_split(a.root, "test")
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test_images), 1000):
                pred = model(scaled(test_images[i : i + 1000])).argmax(1)
                correct += (pred == test_labels[i : i + 1000]).sum().item()
        out["accuracy"] = correct / len(test_images)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
