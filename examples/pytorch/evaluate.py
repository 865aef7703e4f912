#!/usr/bin/python3
"""Test accuracy of an o3train checkpoint, computed by PyTorch, on any test set o3train can read.

    evaluate.py CHECKPOINT --data DIR [--dataset fashion-mnist|imagefolder|webdataset] [--shards PATTERN]
                [--model cnn|mlp|resnet] [--image-size N] [--channels 1|3] [--json] [--dump-logits FILE]

CHECKPOINT is a local safetensors file (`o3ckpt get RUN latest -o ckpt.safetensors`, or a plain
PyTorch state dict). The model and what it takes (channels, size, classes, normalisation) come
from the checkpoint's metadata; DIR holds the test set in any of o3train's layouts, whatever the
model was trained on, and its images are prepared exactly as o3train prepares them: idx images are
gray images, replicated for a 3-channel model and resized like decoded ones. --model, --image-size
and --channels are needed only for a file that does not record them. Exit status: 0, 64 for a file
that does not fit, 66 for a missing file.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import st_file  # noqa: E402
from checkpoint import DATASETS, CheckpointError, failure, load_model  # noqa: E402
from data_layouts import list_image_folder, shard_paths, shard_samples  # noqa: E402
from fashion_mnist import load_split, to_input  # noqa: E402
from images import gray_samples, image_sample  # noqa: E402


def idx_batches(root, rec, batch):
    """The t10k idx images, as the model takes them, and their labels, `batch` at a time."""
    images, labels = load_split(root, "test")
    images = images.squeeze(1)
    same = (1, images.shape[1], images.shape[2]) == (rec["channels"], rec["height"], rec["width"])
    for i in range(0, len(labels), batch):
        part = images[i:i + batch]
        yield (part.unsqueeze(1) if same else gray_samples(part, rec["channels"], rec["height"])), labels[i:i + batch]


def check_classes(names, rec):
    """An ImageFolder test tree's class directories must be the model's, label for label, as o3train checks."""
    if len(names) > rec["classes"]:
        raise CheckpointError(f"evaluation data has more classes ({len(names)}) than the model ({rec['classes']})")
    for i, (name, trained) in enumerate(zip(names, rec.get("classNames") or [])):
        if name != trained:
            raise CheckpointError(
                f"evaluation class {i} is '{name}' but the model's class {i} is '{trained}': "
                f"the evaluation tree needs the {len(rec['classNames'])} class directories the model was trained on"
            )


def encoded_samples(kind, root, shards):
    """(class names or None, iterator of (encoded image, label, name)) of an ImageFolder tree or of shards, in o3train's order."""
    if kind == "webdataset":
        paths = shard_paths(root, shards)
        return None, ((data, label, f"{path}: member {member}") for path in paths for data, label, member in shard_samples(path))
    classes, files = list_image_folder(root)

    def read():
        for path, label in files:
            with open(path, "rb") as f:
                yield f.read(), label, path

    return classes, read()


def image_batches(kind, root, shards, rec, batch):
    """Decoded test images as the model takes them, and their labels, `batch` at a time."""
    classes, samples = encoded_samples(kind, root, shards)
    if classes is not None:
        check_classes(classes, rec)
    images, labels = [], []
    for data, label, name in samples:
        images.append(image_sample(data, name, rec["channels"], rec["height"]))
        labels.append(label)
        if len(labels) == batch:
            yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)
            images, labels = [], []
    if labels:
        yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def evaluate(model, batches, rec):
    """Loss (mean cross-entropy), correct and total counts per class, and the logits and labels of every image."""
    classes = rec["classes"]
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros(classes, dtype=torch.int64)
    total = torch.zeros(classes, dtype=torch.int64)
    logits, all_labels = [], []
    with torch.no_grad():
        for images, y in batches:
            if len(y) and int(y.max()) >= classes:
                raise CheckpointError(f"the test set has label {int(y.max())}, the model only {classes} classes")
            out = model(to_input(images, rec["normalize"]))
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += torch.bincount(y[out.argmax(1) == y], minlength=classes)
            total += torch.bincount(y, minlength=classes)
            logits.append(out)
            all_labels.append(y)
    samples = int(total.sum())
    if samples == 0:
        raise CheckpointError("the test set holds no samples")
    return loss_sum.item() / samples, correct, total, torch.cat(logits), torch.cat(all_labels)


def main(argv):
    p = argparse.ArgumentParser(prog="evaluate.py", description="test accuracy of an o3train checkpoint, in PyTorch")
    p.add_argument("checkpoint", help="a local safetensors file")
    p.add_argument("--data", required=True, help="the test set: idx files (t10k-*, gzipped or not), an ImageFolder tree or a directory of shards")
    p.add_argument("--dataset", choices=DATASETS, help="the layout of --data (default: the one the model was trained on)")
    p.add_argument("--shards", metavar="PATTERN", help="webdataset: shard names under --data, e.g. 'test-{000000..000009}.tar' (default every *.tar)")
    p.add_argument("--model", choices=["cnn", "mlp", "resnet"], help="needed only when the checkpoint does not record its model")
    p.add_argument("--image-size", type=int, metavar="N", help="needed only when the checkpoint does not record its input")
    p.add_argument("--channels", type=int, choices=[1, 3], help="needed only when the checkpoint does not record its input")
    p.add_argument("--batch", type=int, default=1000, help="images per forward pass (default 1000, as o3train)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--dump-logits", metavar="FILE", help="write the logits and labels of the first --dump-count test images as safetensors")
    p.add_argument("--dump-count", type=int, default=100, metavar="N", help="images for --dump-logits (default 100)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        loaded = load_model(a.checkpoint, a.model, a.dataset, a.channels, a.image_size)
        rec = loaded.input
        kind = a.dataset or rec["dataset"]
        if a.shards and kind != "webdataset":
            raise CheckpointError("--shards applies to --dataset webdataset only")
        batches = idx_batches(a.data, rec, a.batch) if kind == "fashion-mnist" else image_batches(kind, a.data, a.shards, rec, a.batch)
        loss, correct, total, logits, labels = evaluate(loaded.model, batches, rec)
    except (OSError, ValueError) as err:
        return failure("evaluate.py", err)
    samples = int(total.sum())
    accuracy = correct.sum().item() / samples
    if a.dump_logits:
        n = min(a.dump_count, samples)
        st_file.save(a.dump_logits, {"logits": logits[:n], "labels": labels[:n]}, {"model": loaded.name, "checkpoint": a.checkpoint})
    if a.json:
        print(json.dumps({"model": loaded.name, "config": loaded.config, "input": rec, "dataset": kind, "samples": samples, "accuracy": accuracy,
                          "loss": loss, "correct_per_class": correct.tolist(), "total_per_class": total.tolist()}))
    else:
        print(f"{loaded.name} on {kind}: test accuracy {accuracy * 100:.2f}% ({correct.sum().item()}/{samples}), loss {loss:.4f}")
        for c in range(len(total)):
            print(f"  class {c}: {correct[c].item()}/{total[c].item()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
