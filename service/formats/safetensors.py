"""A memory-mapped safetensors reader (numpy only): tensors come out as float32 arrays.

Checks each header entry against the file, so a damaged or truncated download is an error
naming the tensor, never garbage weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np


class SafeTensors:
    """Memory-mapped reader for safetensors files, returning float32 arrays (bf16 included)."""

    _DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}

    def __init__(self, paths: list[Path]) -> None:
        self._maps: list[np.memmap] = []
        self.index: dict[str, tuple[int, str, tuple[int, ...], int, int]] = {}
        for path in paths:
            header, start = self._header(path)
            data = np.memmap(path, dtype=np.uint8, mode="r")
            self._maps.append(data)
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                try:
                    dtype, shape, (begin, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"{path}: damaged entry for tensor {key!r}") from None
                if dtype not in self._DTYPES:
                    raise ValueError(f"{path}: tensor {key!r} has dtype {dtype}; accepted: {', '.join(self._DTYPES)}")
                size = int(np.prod(shape)) * np.dtype(self._DTYPES[dtype]).itemsize
                if not 0 <= begin <= end or end - begin != size or start + end > len(data):
                    raise ValueError(f"{path}: tensor {key!r} has inconsistent offsets (file damaged?)")
                self.index[key] = (len(self._maps) - 1, dtype, shape, start + begin, start + end)

    @staticmethod
    def _header(path: Path) -> tuple[dict[str, Any], int]:
        with open(path, "rb") as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
            if not 0 < n <= 100 << 20:
                raise ValueError(f"{path} is not a safetensors file")
            try:
                header = json.loads(f.read(n))
                assert isinstance(header, dict)
            except (ValueError, AssertionError):
                raise ValueError(f"{path} has a damaged safetensors header") from None
        return header, 8 + n

    def get(self, key: str) -> np.ndarray:
        """The tensor `key` as a float32 array."""
        i, dtype, shape, begin, end = self.index[key]
        raw = self._maps[i][begin:end].view(self._DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)

    def __enter__(self) -> "SafeTensors":
        return self

    def __exit__(self, *exc: object) -> None:
        self._maps.clear()  # the maps close once no array refers to them
