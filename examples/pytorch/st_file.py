"""Reads and writes safetensors files: with the `safetensors` package when it is installed, else
with the standard library (the format is an 8-byte little-endian header length, a JSON header
whose optional `__metadata__` maps strings to strings, then raw little-endian tensor bytes).
"""

import json
import struct
import sys

import torch

try:
    from safetensors import safe_open as _safe_open
    from safetensors.torch import save_file as _save_file
except ImportError:
    _safe_open = _save_file = None

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}

# The reference implementation's limit on the header.
MAX_HEADER_BYTES = 100_000_000


class FormatError(ValueError):
    """The file is not valid safetensors; the message names the file and what is wrong."""


def _require_little_endian():
    # Tensor bytes are little-endian; reinterpreting them on a big-endian host would be wrong.
    if sys.byteorder != "little":
        raise FormatError("this reader needs a little-endian machine; install the safetensors package")


def load(path):
    """Returns ({name: tensor}, metadata) for the safetensors file at `path`."""
    if _safe_open is not None:
        with _safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    _require_little_endian()
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise FormatError(f"{path}: {len(data)} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise FormatError(f"{path}: header length {n} does not fit the {len(data)}-byte file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise FormatError(f"{path}: header is not UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: __metadata__ is not an object of strings")
    body = memoryview(data)[8 + n:]
    tensors = {}
    for name, entry in header.items():
        dtype = DTYPES.get(entry.get("dtype") if isinstance(entry, dict) else None)
        if dtype is None:
            raise FormatError(f"{path}: tensor '{name}' has an unknown dtype {entry!r}")
        begin, end = entry["data_offsets"]
        shape = entry["shape"]
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= begin <= end <= len(body) or end - begin != numel * torch.tensor([], dtype=dtype).element_size():
            raise FormatError(f"{path}: tensor '{name}' has data_offsets {[begin, end]} that do not hold {entry['dtype']} {shape}")
        # A copy, so that the tensor owns aligned, writable memory.
        raw = bytearray(body[begin:end])
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    return tensors, metadata


def save(path, tensors, metadata=None):
    """Writes {name: tensor} (any device, any layout) with optional string metadata."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if _save_file is not None:
        _save_file(cpu, path, metadata=metadata)
        return
    _require_little_endian()
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in cpu.items():
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    body = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padded with spaces so that the data section starts 8-byte aligned, as the reference writer does.
    body += b" " * (-len(body) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)))
        f.write(body)
        for raw in chunks:
            f.write(raw)
