"""The image layouts o3train reads, listed and labelled as its loaders do (cpp/dataset.cpp, cpp/webdataset.cpp).

ImageFolder: ROOT/<class>/**/*.{jpg,jpeg,png} (extensions in any case, symlinks followed), classes
sorted by name and numbered in that order, files sorted by path within each class.

WebDataset: tar shards in ROOT, every *.tar (sorted) or those a brace pattern names; a sample is a
run of consecutive members sharing a key (the member name up to the first dot of its last path
component): one <key>.png|jpg|jpeg and one <key>.cls holding the class index as text. Other
members are ignored, but a key with no image or no label is an error, as in o3train. Shards are
read with the standard library's tarfile and must end with the end-of-archive marker.

Names sort as o3train sorts them: by their bytes.
"""

import os
import re
import tarfile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MAX_SHARDS = 1000000
_SPACE = b" \t\n\v\f\r"
_BLOCK = 512


def _is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_image_folder(root):
    """(class names, [(path, label)]) of an ImageFolder tree, in o3train's order."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a directory")
    classes = sorted((e.name for e in os.scandir(root) if e.is_dir()), key=os.fsencode)
    samples = []
    for label, name in enumerate(classes):
        files = []
        for top, _, names in os.walk(os.path.join(root, name), followlinks=True):
            files += [p for p in (os.path.join(top, n) for n in names) if _is_image_name(p) and os.path.isfile(p)]
        samples += [(p, label) for p in sorted(files, key=os.fsencode)]
    if not samples:
        raise ValueError(f"{root}: no JPEG or PNG images in class directories")
    return classes, samples


def expand_shard_pattern(pattern):
    """Brace patterns as o3train expands them: numeric ranges ("{000000..000127}", zero-padded to the first bound) and lists ("{a,b}")."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = pattern.find("}", start)
    if end < 0:
        raise ValueError(f"shard pattern '{pattern}' has a '{{' without its '}}'")
    head, body = pattern[:start], pattern[start + 1:end]
    tails = expand_shard_pattern(pattern[end + 1:])
    if ".." in body:
        a, b = body.split("..", 1)
        if not all(re.fullmatch(r"[0-9]{1,11}", s) for s in (a, b)) or int(a) > int(b):
            raise ValueError(f"shard pattern '{pattern}': a range must be {{first..last}} with first <= last, e.g. {{000000..000127}}")
        if int(b) - int(a) >= _MAX_SHARDS:
            raise ValueError(f"shard pattern '{pattern}' names too many shards")
        alternatives = [str(i).zfill(len(a)) for i in range(int(a), int(b) + 1)]
    else:
        alternatives = body.split(",")
    if len(alternatives) * len(tails) > _MAX_SHARDS:
        raise ValueError(f"shard pattern '{pattern}' names too many shards")
    return [head + alt + tail for alt in alternatives for tail in tails]


def shard_paths(root, pattern=None):
    """The shards o3train reads from `root`: every *.tar in it, sorted, or those `pattern` names."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a directory")
    if pattern:
        return [os.path.join(root, name) for name in expand_shard_pattern(pattern)]
    paths = sorted(
        (os.path.join(root, e.name) for e in os.scandir(root) if e.is_file() and os.path.splitext(e.name)[1].lower() == ".tar"),
        key=os.fsencode,
    )
    if not paths:
        raise ValueError(f"{root}: no *.tar shards")
    return paths


def _label(data, where):
    text = data.strip(_SPACE)
    if not re.fullmatch(rb"[0-9]{1,9}", text):
        raise ValueError(f"{where}: the class index must be a non-negative integer, not '{text[:40].decode(errors='replace')}'")
    return int(text)


def shard_samples(path):
    """(image bytes, label, member name) of every sample of one shard, in stored order."""
    try:
        yield from _read_shard(path)
    except tarfile.TarError as err:
        raise ValueError(f"{path}: corrupt or truncated tar: {err}") from None


def _read_shard(path):
    with tarfile.open(path, "r:") as tar:
        key, image, label, name, at = None, None, None, None, 0

        def finish():
            if key is None:
                return None
            if image is None or label is None:
                missing = "<key>.cls member" if image is not None else "<key>.png or <key>.jpg member"
                raise ValueError(f"{path}: sample '{key}' at offset {at} has no {missing}")
            return image, label, name

        for m in tar:
            if not m.isreg():
                continue
            dot = m.name.find(".", m.name.rfind("/") + 1)
            if dot < 0:
                continue
            member_key, ext = m.name[:dot], m.name[dot + 1:].lower()
            if member_key != key:
                done = finish()
                if done:
                    yield done
                key, image, label, name, at = member_key, None, None, None, m.offset
            where = f"{path}: member {m.name} at offset {m.offset}"
            if ext in ("png", "jpg", "jpeg"):
                if image is not None:
                    raise ValueError(f"{where}: a second image for the sample '{key}'")
                image, name = tar.extractfile(m).read(), m.name
            elif ext == "cls":
                label = _label(tar.extractfile(m).read(), where)
        done = finish()
        if done:
            yield done
        # tarfile ends quietly at a header it cannot read; o3train insists on the end-of-archive marker.
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(_BLOCK) != bytes(_BLOCK):
            raise ValueError(f"{path}: truncated or corrupt tar: no end-of-archive marker at offset {tar.offset}")
