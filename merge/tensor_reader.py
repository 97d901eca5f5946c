"""Read safetensors tensors with ``pread`` instead of a memory map, for mergekit's merges.

mergekit opens each input shard with ``safetensors.safe_open``, which maps the whole file, and keeps
the handle for the rest of the merge. Every page it has read stays mapped, so a merge's resident set
grows to the size of all its inputs, although it only ever needs a few tensors at a time. Here each
tensor is read into its own buffer and the file is closed again: once merged and written, a
tensor's memory is freed, and the peak stays near the largest tensor times the number of inputs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mergekit.config import MergeConfiguration

# safetensors' dtype names (https://github.com/huggingface/safetensors, format spec).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: str) -> dict[str, TensorEntry]:
    """Tensor name -> entry, from a safetensors file's JSON header (the data is not read)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    base = 8 + size
    entries = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which tempa cannot read")
        start, end = info["data_offsets"]
        entries[name] = TensorEntry(DTYPES[info["dtype"]], tuple(info["shape"]), base + start, base + end)
    return entries


def read_tensor(path: str, entry: TensorEntry) -> torch.Tensor:
    """The tensor's bytes, read into a fresh buffer that nothing else maps."""
    buffer = torch.empty(entry.end - entry.start, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    done = 0
    with open(path, "rb", buffering=0) as handle:
        while done < len(view):
            got = os.preadv(handle.fileno(), [view[done:]], entry.start + done)
            if got == 0:
                raise OSError(f"{path} ends inside tensor data: it is truncated")
            done += got
    return buffer.view(entry.dtype).reshape(entry.shape)


def unmapped_loader(model: Any) -> Any:
    """A mergekit ``LazyTensorLoader`` for ``model`` (a ``ModelReference``) that reads with pread."""
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader

    class UnmappedTensorLoader(LazyTensorLoader):
        def __init__(self, index: Any) -> None:
            super().__init__(index, lazy_unpickle=False)  # safetensors only: nothing is ever unpickled
            self._headers: dict[str, dict[str, TensorEntry]] = {}
            self._header_lock = threading.Lock()

        def get_tensor(
            self, key: str, device: str = "cpu", aliases: list[str] | None = None, raise_on_missing: bool = True
        ) -> torch.Tensor | None:
            paths = self.index.tensor_paths
            if aliases and key not in paths:
                key = next((alias for alias in aliases if alias in paths), key)
            if key not in paths:
                if raise_on_missing:
                    raise KeyError(key)
                return None
            path = os.path.join(self.index.base_path, paths[key])
            with self._header_lock:
                if path not in self._headers:
                    self._headers[path] = read_header(path)
            return read_tensor(path, self._headers[path][key]).to(device)

    return UnmappedTensorLoader(model.tensor_index())


@contextmanager
def unmapped_inputs(merge_config: MergeConfiguration) -> Iterator[None]:
    """Have mergekit read ``merge_config``'s safetensors inputs with pread for the duration.

    mergekit looks its loaders up in ``LoaderCache``, a process-wide table that it fills on first
    use and never empties. Registering ours first makes mergekit use them; removing them afterwards
    keeps a long-running ``tempa run`` from holding every merged input open.
    """
    from mergekit.io.tasks import LoaderCache

    cache = LoaderCache()
    models = [m for m in merge_config.referenced_models() if m.lora is None]
    for model in models:
        if model.tensor_index().is_safetensors:
            cache.loaders[model] = unmapped_loader(model)
    try:
        yield
    finally:
        for model in merge_config.referenced_models():
            cache.loaders.pop(model, None)

