"""Python peer for the trainer benchmark: the same CNN, data, batch size, optimizer and threads as
the native trainer (cpp/models.cpp "cnn" defaults, Adam lr 1e-3, images scaled to [-1, 1]),
trained with Debian's python3-torch. Prints one JSON line.

Run with /usr/bin/python3 and OPENBLAS_NUM_THREADS=1 (as the native trainer runs).
"""
import argparse
import gzip
import json
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4 : 4 + 4 * rank])
    return torch.frombuffer(bytearray(data[4 + 4 * rank :]), dtype=torch.uint8).reshape(dims)


def load(root, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")).long()
    return images.unsqueeze(1), labels


class Cnn(nn.Module):
    def __init__(self, channels=32, hidden=128, dropout=0.25, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc1 = nn.Linear(2 * channels * 7 * 7, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def scaled(images):
    return images.float().mul_(2.0 / 255).sub_(1.0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="0: one full epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluate", action="store_true")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    images, labels = load(a.root, "train")
    model = Cnn()
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
        test_images, test_labels = load(a.root, "test")
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
