"""o3train's models (cpp/models.cpp) as PyTorch modules.

Attribute names, layer order and defaults follow the C++ modules exactly, so that `state_dict()`
has the same names and shapes as a checkpoint's `model.*` tensors, and the same weights give the
same logits in eval mode.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# The hyperparameters each model takes, with o3train's defaults.
DEFAULTS = {
    "mlp": {"hidden": 256, "layers": 2, "dropout": 0.2},
    "cnn": {"channels": 32, "hidden": 128, "dropout": 0.25},
    "resnet": {"width": 16, "blocks": 1},
}


class Mlp(nn.Module):
    def __init__(self, in_shape, classes, hidden, layers, dropout):
        super().__init__()
        width = in_shape[0] * in_shape[1] * in_shape[2]
        self.hidden = nn.ModuleList()
        for _ in range(layers):
            self.hidden.append(nn.Linear(width, hidden))
            width = hidden
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.hidden:
            x = self.dropout(F.relu(layer(x)))
        return self.out(x)


class Cnn(nn.Module):
    """conv-pool, conv-pool, fc, fc: the classic small (Fashion-)MNIST network."""

    def __init__(self, in_shape, classes, channels, hidden, dropout):
        super().__init__()
        c, h, w = in_shape
        if h % 4 or w % 4:
            raise ValueError("cnn needs image sides divisible by 4")
        self.conv1 = nn.Conv2d(c, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc1 = nn.Linear(2 * channels * (h // 4) * (w // 4), hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def conv3x3(cin, cout, stride):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        # A 1x1 projection where the shape changes, as in the C++ block.
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(cout)
        else:
            self.shortcut = None

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (self.shortcut_bn(self.shortcut(x)) if self.shortcut is not None else x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, three stages of basic blocks, global average pooling, fc."""

    def __init__(self, in_shape, classes, width, blocks):
        super().__init__()
        self.stem = conv3x3(in_shape[0], width, 1)
        self.stem_bn = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList()
        channels = width
        for stage in range(3):
            for b in range(blocks):
                out = width << stage
                self.blocks.append(BasicBlock(channels, out, 2 if stage > 0 and b == 0 else 1))
                channels = out
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean((2, 3)))


def resolve_config(name, config=None):
    """o3train's defaults for `name`, overridden by `config` (unknown names refused)."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(DEFAULTS)})")
    values = dict(DEFAULTS[name])
    for key, value in (config or {}).items():
        if key not in values:
            raise ValueError(f"model '{name}' has no hyperparameter '{key}' (it has: {', '.join(sorted(values))})")
        values[key] = value
    return values


def build_model(name, config=None, in_shape=(1, 28, 28), classes=10):
    """The model `name` with o3train's defaults, overridden by `config`."""
    values = resolve_config(name, config)
    counts = {k: int(v) for k, v in values.items() if k != "dropout"}
    dropout = float(values.get("dropout", 0))
    if name == "mlp":
        return Mlp(in_shape, classes, counts["hidden"], counts["layers"], dropout)
    if name == "cnn":
        return Cnn(in_shape, classes, counts["channels"], counts["hidden"], dropout)
    return ResNet(in_shape, classes, counts["width"], counts["blocks"])
