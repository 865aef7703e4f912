"""An o3train checkpoint (or any safetensors state dict) as a PyTorch model.

A checkpoint holds the model as `model.<name>` tensors beside the optimizer, RNG and loader state,
and records the model and its hyperparameters in its metadata (`config` JSON: `model.name`,
`model.config`). A plain PyTorch state dict holds bare names.
"""

import json
import sys

import st_file
from models import build_model, resolve_config


EX_USAGE, EX_NOINPUT = 64, 66


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


def load_model(path, requested=None):
    """(model in eval mode, name, hyperparameters with defaults filled in, metadata) from the safetensors file at `path`.

    The model kind comes from the metadata, else from `requested`; both given and different is an
    error, as is a file whose tensors do not match the model's state dict name for name.
    """
    tensors, metadata = st_file.load(path)
    name, config = recorded_model(metadata)
    if name and requested and name != requested:
        raise CheckpointError(f"{path} holds a '{name}' model, not '{requested}': drop --model or pass --model {name}")
    name = name or requested
    if not name:
        raise CheckpointError(f"{path} does not record its model: pass --model cnn, mlp or resnet")
    config = resolve_config(name, config)
    model = build_model(name, config)
    state = model_state(tensors)
    problems = mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError("\n".join(f"{path} does not fit the {name} model: {p}" for p in problems))
    model.load_state_dict(state)
    return model.eval(), name, config, metadata


def recording_metadata(name, config):
    """Metadata that records the model as an o3train checkpoint does."""
    return {"format": "pt", "model": name, "config": json.dumps({"model": {"name": name, "config": config}})}


def failure(prog, err):
    """Prints a bad input (OSError or ValueError) as lines on stderr; returns the exit status."""
    missing = isinstance(err, FileNotFoundError)
    message = f"{err.filename}: not found" if missing and err.filename else str(err)
    for line in message.splitlines():
        print(f"{prog}: {line}", file=sys.stderr)
    return EX_NOINPUT if missing else EX_USAGE
