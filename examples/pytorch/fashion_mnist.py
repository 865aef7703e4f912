"""Fashion-MNIST as o3train reads it: idx files (gzipped or not) in DIR, DIR/FashionMNIST/raw or
DIR/fashion-mnist, images scaled from bytes to [-1, 1] exactly as the trainer scales them.
"""

import gzip
import os
import struct

import torch

CLASSES = 10


def find_idx(root, base):
    """The idx file `base` (preferring the .gz, as o3train does) in any of the places it looks."""
    for d in (root, os.path.join(root, "FashionMNIST", "raw"), os.path.join(root, "fashion-mnist")):
        for suffix in (".gz", ""):
            path = os.path.join(d, base + suffix)
            if os.path.exists(path):
                return path
    raise FileNotFoundError(f"no {base}[.gz] in {root} or {os.path.join(root, 'FashionMNIST', 'raw')}; check --data")


def read_idx(path):
    """An idx file of unsigned bytes as a uint8 tensor of its shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] or data[1] or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    rank = data[3]
    dims = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
    body = bytearray(data[4 + 4 * rank:])
    numel = 1
    for d in dims:
        numel *= d
    if len(body) != numel:
        raise ValueError(f"{path}: {len(body)} data bytes for shape {list(dims)}")
    return torch.frombuffer(body, dtype=torch.uint8).reshape(dims)


# How o3train makes a model's input from a sample's bytes (cpp/trainer.h, kInputMul and kInputSub).
NORMALIZE = {"mul": 2.0 / 255, "sub": 1.0}


def to_input(images, normalize=None):
    """uint8 N x H x W (or N x C x H x W) -> float NCHW, byte * mul - sub ([-1, 1]): the same float ops as o3train."""
    n = normalize or NORMALIZE
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.to(torch.float32).mul_(n["mul"]).sub_(n["sub"])


def load_split(root, split="test"):
    """(uint8 images N x 1 x H x W, int64 labels N) of the `test` (t10k) or `train` split."""
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(find_idx(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find_idx(root, f"{prefix}-labels-idx1-ubyte")).to(torch.int64)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: {split} images {list(images.shape)} do not match labels {list(labels.shape)}")
    return images.unsqueeze(1), labels
