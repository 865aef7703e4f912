"""An o3train checkpoint (or any safetensors state dict) as a PyTorch model.

A checkpoint holds the model as `model.<name>` tensors beside the optimizer, RNG and loader state,
and records in its metadata the model and its hyperparameters (`config` JSON: `model.name`,
`model.config`) and what the model takes (`input` JSON: the dataset layout, channels, height,
width, classes, class names of an ImageFolder, the resize and the normalisation; see
checkpoint/meta.ts). A plain PyTorch state dict holds bare names and records none of it.
"""

import json
import sys
from collections import namedtuple

import st_file
from fashion_mnist import NORMALIZE
from models import build_model, resolve_config


EX_USAGE, EX_NOINPUT = 64, 66
DATASETS = ("fashion-mnist", "imagefolder", "webdataset")
# What o3train's options default to, for files that do not record their input.
IMAGE_DEFAULTS = {"channels": 3, "size": 64}

Loaded = namedtuple("Loaded", "model name config metadata input")


class CheckpointError(ValueError):
    """The checkpoint does not fit: each line of the message is one problem."""


def model_state(tensors):
    """The model's tensors: the `model.*` entries without the prefix, or all of them if none has it."""
    prefixed = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return prefixed or dict(tensors)


def recorded_model(metadata):
    """(name, hyperparameters) the checkpoint's metadata records, or (None, {})."""
    try:
        recorded = json.loads(metadata.get("config", "null")) or {}
    except ValueError:
        raise CheckpointError("metadata 'config' is not JSON") from None
    model = recorded.get("model") if isinstance(recorded, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return None, {}
    return model["name"], dict(model.get("config") or {})


def _check_input(rec):
    """The metadata 'input' record, checked field by field; a CheckpointError names the first bad one."""
    def bad(what):
        return CheckpointError(f"metadata 'input': {what}")

    def count(key, low=1):
        v = rec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise bad(f"{key} must be an integer >= {low}, not {v!r}")
        return v

    if not isinstance(rec, dict):
        raise bad("not an object")
    if rec.get("dataset") not in DATASETS:
        raise bad(f"dataset must be one of {', '.join(DATASETS)}, not {rec.get('dataset')!r}")
    if rec.get("channels") not in (1, 3):
        raise bad(f"channels must be 1 or 3, not {rec.get('channels')!r}")
    count("height")
    count("width")
    classes = count("classes")
    names = rec.get("classNames")
    if names is not None and (not isinstance(names, list) or len(names) != classes or not all(isinstance(n, str) for n in names)):
        raise bad(f"classNames must be {classes} names")
    if rec.get("resize") not in (None, "bilinear"):
        raise bad(f"resize '{rec.get('resize')}' is not one this script knows (bilinear)")
    n = rec.get("normalize")
    if not isinstance(n, dict) or not all(isinstance(n.get(k), (int, float)) and not isinstance(n.get(k), bool) for k in ("mul", "sub")):
        raise bad("normalize must hold the numbers mul and sub")
    return rec


def recorded_input(metadata):
    """The input record of the metadata, or None for a file that has none (older runs, PyTorch's own files)."""
    if "input" not in metadata:
        return None
    try:
        rec = json.loads(metadata["input"])
    except ValueError:
        raise CheckpointError("metadata 'input' is not JSON") from None
    return _check_input(rec)


def assumed_input(metadata, dataset=None, channels=None, size=None):
    """For a file that records no input: what o3train made of its dataset with default options.

    The dataset is the one the file's config names (older o3train checkpoints record it), else
    `dataset`, else fashion-mnist; images then have o3train's default channels and size unless given.
    """
    try:
        config = json.loads(metadata.get("config", "null")) or {}
    except ValueError:
        config = {}
    kind = (config.get("dataset") if isinstance(config, dict) else None) or dataset or "fashion-mnist"
    if kind not in DATASETS:
        kind = "fashion-mnist"
    if kind == "fashion-mnist" and channels is None and size is None:
        return {"dataset": kind, "channels": 1, "height": 28, "width": 28, "classes": 10, "normalize": NORMALIZE}
    side = size or IMAGE_DEFAULTS["size"]
    return {"dataset": kind, "channels": channels or IMAGE_DEFAULTS["channels"], "height": side, "width": side, "classes": 10,
            "resize": "bilinear", "normalize": NORMALIZE}


def mismatches(expected, state):
    """One line per name that is missing, unexpected, or of another shape than `expected` has."""
    lines = [f"missing {k} {list(t.shape)}" for k, t in expected.items() if k not in state]
    lines += [f"unexpected {k} {list(t.shape)}" for k, t in state.items() if k not in expected]
    lines += [
        f"{k} is {list(state[k].shape)}, the model's is {list(t.shape)}"
        for k, t in expected.items()
        if k in state and state[k].shape != t.shape
    ]
    return lines


def load_model(path, requested=None, dataset=None, channels=None, size=None):
    """Loaded(model in eval mode, name, hyperparameters with defaults filled in, metadata, input record) from the safetensors file at `path`.

    The model kind comes from the metadata, else from `requested`; the input (channels, size,
    classes) from the metadata, else from `channels` and `size` (see assumed_input). A request that
    contradicts the metadata is an error, as is a file whose tensors do not match the model's
    state dict name for name.
    """
    tensors, metadata = st_file.load(path)
    name, config = recorded_model(metadata)
    if name and requested and name != requested:
        raise CheckpointError(f"{path} holds a '{name}' model, not '{requested}': drop --model or pass --model {name}")
    name = name or requested
    if not name:
        raise CheckpointError(f"{path} does not record its model: pass --model cnn, mlp or resnet")
    if size is not None and not 8 <= size <= 1024:
        raise CheckpointError("--image-size must be between 8 and 1024, as o3train's")
    rec = recorded_input(metadata)
    if rec is None:
        rec = assumed_input(metadata, dataset, channels, size)
    else:
        shape = f"{rec['channels']} x {rec['height']} x {rec['width']}"
        if channels is not None and channels != rec["channels"]:
            raise CheckpointError(f"{path} holds a model of {shape} inputs, not {channels} channels: drop --channels")
        if size is not None and (size, size) != (rec["height"], rec["width"]):
            raise CheckpointError(f"{path} holds a model of {shape} inputs, not {size} x {size}: drop --image-size")
    config = resolve_config(name, config)
    model = build_model(name, config, (rec["channels"], rec["height"], rec["width"]), rec["classes"])
    state = model_state(tensors)
    problems = mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError("\n".join(f"{path} does not fit the {name} model: {p}" for p in problems))
    model.load_state_dict(state)
    return Loaded(model.eval(), name, config, metadata, rec)


def recording_metadata(name, config, input_record=None):
    """Metadata that records the model (and, when given, its input) as an o3train checkpoint does."""
    out = {"format": "pt", "model": name, "config": json.dumps({"model": {"name": name, "config": config}})}
    if input_record is not None:
        out["input"] = json.dumps(input_record)
    return out


def failure(prog, err):
    """Prints a bad input (OSError or ValueError) as lines on stderr; returns the exit status."""
    missing = isinstance(err, FileNotFoundError)
    message = f"{err.filename}: not found" if missing and err.filename else str(err)
    for line in message.splitlines():
        print(f"{prog}: {line}", file=sys.stderr)
    return EX_NOINPUT if missing else EX_USAGE
