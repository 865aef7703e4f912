"""Announce a PyTorch sampler's order to o3mount, so that a stock DataLoader over files on the mount
gets them fetched before they are opened (what o3train does for itself).

    from announce import AnnouncingSampler, paths_below

    data = torchvision.datasets.ImageFolder("/mnt/o3/train", transform=...)
    sampler = AnnouncingSampler(torch.utils.data.RandomSampler(data),
                                paths_below("/mnt/o3", [p for p, _ in data.samples]),
                                "/run/user/1000/o3.sock")   # o3mount --control-socket
    loader = torch.utils.data.DataLoader(data, sampler=sampler, batch_size=64, num_workers=4)

At each epoch's start (each iter() of the sampler) the wrapper draws the wrapped sampler's order,
hands it to a background thread that sends it to the mount's control socket as newline-delimited
JSON requests of at most 1,000 paths ({"op":"prefetch","paths":[...]}, lib/control-protocol.ts),
and yields the same order. Announcing is a hint: a socket that is missing, refuses or breaks is
reported once (a warning) and the loader goes on as it would have. Standard library only; any
sampler works, batch samplers too (pass it as batch_sampler=).
"""

import json
import os
import queue
import socket
import threading
import warnings

# The protocol's limits (lib/control-protocol.ts): a request line of at most 1 MiB and 10,000 paths.
# Smaller requests let the mount start on the first files while it checks the later ones.
MAX_REQUEST_BYTES = 1 << 20
PATHS_PER_REQUEST = 1000


def paths_below(mount_root, paths):
    """`paths` (absolute, or relative to the working directory) as the control socket names them:
    relative to the mount's root, with '/' separators. Raises ValueError for a path outside it.
    Paths are compared as written (no symlinks resolved: that would stat every file on the mount),
    so name the root as the dataset's paths do."""
    root = os.path.abspath(mount_root)
    out = []
    for p in paths:
        rel = os.path.relpath(os.path.abspath(p), root)
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            raise ValueError(f"{p} is not below the mount at {mount_root}")
        out.append(rel.replace(os.sep, "/"))
    return out


def request_lines(paths, per_request=PATHS_PER_REQUEST):
    """Prefetch requests for `paths`, in order, each line within the protocol's limits."""
    head, tail = '{"op":"prefetch","paths":[', ']}\n'
    parts, size = [], len(head) + len(tail)
    for p in paths:
        item = json.dumps(p, ensure_ascii=False)
        n = len(item.encode()) + 1
        if parts and (len(parts) >= per_request or size + n > MAX_REQUEST_BYTES):
            yield head + ",".join(parts) + tail
            parts, size = [], len(head) + len(tail)
        parts.append(item)
        size += n
    if parts:
        yield head + ",".join(parts) + tail


class Announcer:
    """One connection to the control socket, served by a daemon thread: announce() never blocks
    the training loop, and epochs are sent in the order they were announced."""

    def __init__(self, socket_path):
        self.socket_path = socket_path
        self._todo = queue.Queue()
        self._sock = None
        self._warned = False
        threading.Thread(target=self._run, name="o3mount-announce", daemon=True).start()

    def announce(self, paths):
        if paths:
            self._todo.put(list(paths))

    def flush(self):
        """Waits until everything announced so far has been sent and answered (or has failed)."""
        self._todo.join()

    def _warn(self, why):
        if not self._warned:
            self._warned = True
            warnings.warn(f"announcing the read order to o3mount at {self.socket_path} failed ({why}); "
                          "the loader goes on without it", RuntimeWarning, stacklevel=2)

    def _run(self):
        while True:
            paths = self._todo.get()
            try:
                self._send(paths)
            except (OSError, ValueError) as e:
                self._warn(e)
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            finally:
                self._todo.task_done()

    def _send(self, paths):
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(self.socket_path)
            self._answers = self._sock.makefile("r", encoding="utf-8")
        lines = list(request_lines(paths))
        self._sock.sendall("".join(lines).encode())
        for _ in lines:
            line = self._answers.readline()
            if not line:
                raise OSError("the mount closed the connection")
            answer = json.loads(line)
            if not answer.get("ok"):
                self._warn(f"the mount refused it: {answer.get('error')}")


class AnnouncingSampler:
    """Wraps `sampler` (any iterable of dataset indices, or of lists of them) and announces each
    epoch's order to o3mount before yielding it. `dataset_paths[i]` is the file dataset item i is
    read from, relative to the mount's root (see paths_below)."""

    def __init__(self, sampler, dataset_paths, socket_path):
        self.sampler = sampler
        self.dataset_paths = list(dataset_paths)
        self.announcer = Announcer(socket_path)

    def __iter__(self):
        order = list(iter(self.sampler))
        files, seen = [], set()
        for item in order:
            for i in item if isinstance(item, (list, tuple)) else (item,):
                if i not in seen:
                    seen.add(i)
                    files.append(self.dataset_paths[i])
        self.announcer.announce(files)
        return iter(order)

    def __len__(self):
        return len(self.sampler)

    def set_epoch(self, epoch):
        """For a DistributedSampler: its order depends on the epoch."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
