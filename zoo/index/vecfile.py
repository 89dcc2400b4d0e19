"""Vectors kept on disk and read a part at a time: the one reader and writer of vector files.

A vector file is a NumPy ``.npy`` file (format 1.0) of one C-ordered 2-d array of float16 or
float32 rows: any tool reads it (``np.load(path, mmap_mode="r")``), and zoo reads it without
holding it in memory. Writing streams chunks (``write_vectors``), so a 10M x 1280 file (25.6 GB
in float16) is made in O(chunk) memory, atomically (a temporary name renamed at the end).

Reading (``VectorFile.open``) is hostile-input safe: the header is parsed by NumPy's own
``read_array_header`` (a literal, never a pickle), the dtype must be float16/float32 little
endian, the shape 2-d, and the file exactly as long as the header says; anything else is a
one-line ZooError. Rows come back as float32 copies: ``vf[a:b]`` (a sequential read with
``pread``: page cache only, nothing stays in the process), ``vf[rows]`` (a gather through a
memory map opened for that call without read-ahead and closed after it, so only the rows'
pages are read and they leave the process's resident set with it). Memory stays O(what was
asked for).
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from zoo.errors import ZooError
from zoo.io import atomic_path

DTYPES = {"<f2": np.float16, "<f4": np.float32}
MAX_DIM = 1 << 16


class VectorFile:
    """(rows, dim) vectors in a ``.npy`` file, read a part at a time (see the module docstring)."""

    def __init__(self, path: Path, rows: int, dim: int, dtype: np.dtype, offset: int):
        self.path, self.rows, self.dim, self.dtype, self.offset = path, rows, dim, np.dtype(dtype), offset

    @classmethod
    def open(cls, path: str | Path, what: str = "vector file") -> "VectorFile":
        """Open and check ``path``: a one-line ZooError for anything but a well-formed file."""
        path = Path(path)

        def bad(why: str) -> ZooError:
            return ZooError(f"{path}: not a usable {what} ({why})")

        if not path.is_file():
            raise bad("missing or not a regular file")
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version != (1, 0):
                    raise bad(f"npy format {version}, 1.0 expected")
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=4096)
                offset = f.tell()
        except ZooError:
            raise
        except (ValueError, OSError, SyntaxError, EOFError) as e:
            raise bad(" ".join(str(e).split())[:120]) from None
        if dtype.str not in DTYPES:
            raise bad(f"dtype {dtype.str}, float16 or float32 expected")
        if fortran or len(shape) != 2 or not 1 <= shape[1] <= MAX_DIM:
            raise bad(f"shape {shape}{' (Fortran order)' if fortran else ''}, (rows, dim) in C order expected")
        size = path.stat().st_size
        expected = offset + shape[0] * shape[1] * dtype.itemsize
        if size != expected:
            raise bad(f"{size} bytes, the header says {expected}: truncated or damaged")
        return cls(path, int(shape[0]), int(shape[1]), dtype, offset)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.dim

    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * self.dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32, read with pread (no mapping left behind)."""
        start, stop = max(0, start), min(self.rows, stop)
        n = max(0, stop - start)
        raw = np.empty((n, self.dim), self.dtype)
        if n:
            view = memoryview(raw.reshape(-1).view(np.uint8))
            fd = os.open(self.path, os.O_RDONLY)
            try:
                pos, done = self.offset + start * self.dim * self.dtype.itemsize, 0
                while done < len(view):
                    got = os.preadv(fd, [view[done:]], pos + done)
                    if got <= 0:
                        raise ZooError(f"{self.path}: the vector file was cut short while reading")
                    done += got
            finally:
                os.close(fd)
        return raw.astype(np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as float32 (M, dim), through a memory map
        that is closed again before returning."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise ZooError(f"{self.path}: row out of range (0..{self.rows - 1})")
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        order = np.argsort(rows, kind="stable")  # read in file order
        out = np.empty((len(rows), self.dim), np.float32)
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
                mm.madvise(mmap.MADV_RANDOM)  # no read-ahead: a scattered sample reads its rows, not the file
            table = np.frombuffer(mm, self.dtype, count=self.rows * self.dim, offset=self.offset)
            out[order] = table.reshape(self.rows, self.dim)[rows[order]]
            del table  # unmapped on leaving: its pages leave this process's resident set
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.rows)
            if step != 1:
                raise ValueError("a vector file reads contiguous slices only")
            return self.read(start, stop)
        return self.take(key)

    def chunks(self, chunk: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows as float32) for consecutive chunks of the file."""
        for s in range(0, self.rows, chunk):
            yield s, self.read(s, s + chunk)

    def memmap(self) -> np.memmap:
        """The whole array, memory-mapped read-only in its own dtype (pages stay resident while it lives)."""
        return np.memmap(self.path, self.dtype, "r", offset=self.offset, shape=(self.rows, self.dim))


def write_vectors(path: str | Path, chunks: Iterable[np.ndarray], rows: int, dim: int,
                  dtype=np.float16) -> VectorFile:
    """Write ``rows`` x ``dim`` vectors that arrive as chunks (each (m, dim)) to ``path``
    atomically, converted to ``dtype``; a ZooError if they are not exactly ``rows`` rows."""
    dtype = np.dtype(dtype)
    if dtype.str not in DTYPES:
        raise ZooError(f"vector files hold float16 or float32, not {dtype}")
    header = {"descr": dtype.str, "fortran_order": False, "shape": (int(rows), int(dim))}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            done = 0
            for part in chunks:
                part = np.asarray(part)
                if part.ndim != 2 or part.shape[1] != dim:
                    raise ZooError(f"vectors of shape {part.shape} cannot go into a file of dim {dim}")
                done += len(part)
                if done > rows:
                    break
                f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())
            if done != rows:
                raise ZooError(f"{path}: {done} vectors arrived, {rows} were expected")
            f.flush()
            os.fsync(f.fileno())
    return VectorFile.open(path)


def unit_chunks(source, chunk: int = 65536, ids: Optional[np.ndarray] = None) -> Iterator[np.ndarray]:
    """Chunks of ``source`` (an array or a VectorFile; rows ``ids`` only if given) scaled to unit
    length, as float32."""
    n = len(source) if ids is None else len(ids)
    for s in range(0, n, chunk):
        part = source[s:s + chunk] if ids is None else source[ids[s:s + chunk]]
        part = np.array(part, dtype=np.float32)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        part /= np.where(norms > 0, norms, 1)
        yield part
