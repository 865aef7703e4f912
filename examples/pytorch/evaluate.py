#!/usr/bin/python3
"""Fashion-MNIST test accuracy of an o3train checkpoint, computed by PyTorch.

    evaluate.py CHECKPOINT --data DIR [--model cnn|mlp|resnet] [--json] [--dump-logits FILE]

CHECKPOINT is a local safetensors file (`o3ckpt get RUN latest -o ckpt.safetensors`, or a plain
PyTorch state dict); DIR holds the idx files as o3train's --data does (an o3mount mountpoint
works). The model comes from the checkpoint's metadata; --model is needed only for a file that
does not record one. Exit status: 0, 64 for a file that does not fit, 66 for a missing file.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import st_file  # noqa: E402
from checkpoint import failure, load_model  # noqa: E402
from fashion_mnist import CLASSES, load_split, to_input  # noqa: E402


def evaluate(model, images, labels, batch):
    """Loss (mean cross-entropy), correct and total counts per class, and the logits of every image."""
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros(CLASSES, dtype=torch.int64)
    logits = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out = model(to_input(images[i:i + batch]))
            y = labels[i:i + batch]
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += torch.bincount(y[out.argmax(1) == y], minlength=CLASSES)
            logits.append(out)
    total = torch.bincount(labels, minlength=CLASSES)
    return loss_sum.item() / len(labels), correct, total, torch.cat(logits)


def main(argv):
    p = argparse.ArgumentParser(prog="evaluate.py", description="Fashion-MNIST test accuracy of an o3train checkpoint, in PyTorch")
    p.add_argument("checkpoint", help="a local safetensors file")
    p.add_argument("--data", required=True, help="the directory o3train's --data names (idx files, gzipped or not)")
    p.add_argument("--model", choices=["cnn", "mlp", "resnet"], help="needed only when the checkpoint does not record its model")
    p.add_argument("--batch", type=int, default=1000, help="images per forward pass (default 1000, as o3train)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--dump-logits", metavar="FILE", help="write the logits and labels of the first --dump-count test images as safetensors")
    p.add_argument("--dump-count", type=int, default=100, metavar="N", help="images for --dump-logits (default 100)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        model, name, config, _ = load_model(a.checkpoint, a.model)
        images, labels = load_split(a.data, "test")
    except (OSError, ValueError) as err:
        return failure("evaluate.py", err)
    loss, correct, total, logits = evaluate(model, images, labels, a.batch)
    accuracy = correct.sum().item() / len(labels)
    if a.dump_logits:
        n = min(a.dump_count, len(labels))
        st_file.save(a.dump_logits, {"logits": logits[:n], "labels": labels[:n]}, {"model": name, "checkpoint": a.checkpoint})
    if a.json:
        print(json.dumps({"model": name, "config": config, "samples": len(labels), "accuracy": accuracy, "loss": loss,
                          "correct_per_class": correct.tolist(), "total_per_class": total.tolist()}))
    else:
        print(f"{name}: test accuracy {accuracy * 100:.2f}% ({correct.sum().item()}/{len(labels)}), loss {loss:.4f}")
        for c in range(CLASSES):
            print(f"  class {c}: {correct[c].item()}/{total[c].item()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
