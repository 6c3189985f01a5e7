"""Tables too large to hold, put in order a part at a time: rows go to local files by rank (a row's place in the
output, e.g. its video's position in source-id order), a range of ranks per file, and come back a file at a time,
sorted. What the driver holds is one range, whatever the corpus size (an external sort with known ranks: the ranks
come from light columns, so the whole rows are read once and never held together).

No Ray and no object storage here: the files are local (Arrow IPC, LZ4), in a folder the caller owns.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

# Ranks per file: at least this many (a few MB of rows for videos), and at most this many files per name (far
# from the open-file limit, whatever the corpus).
MIN_RANKS, MAX_FILES = 500, 128
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


class RankedSpill:
    """Rows of named tables, each row with a rank in ``[0, ranks)``: :meth:`add` them in any order, then read each
    name back with :meth:`sorted_tables`, a range of ranks at a time."""

    def __init__(self, folder: str, ranks: int):
        self.folder = folder
        self.per_file = max(MIN_RANKS, math.ceil(ranks / MAX_FILES))
        self.files = max(1, math.ceil(ranks / self.per_file))
        self._writers: dict[tuple[str, int], pa.ipc.RecordBatchFileWriter] = {}

    def _path(self, name: str, number: int) -> str:
        return os.path.join(self.folder, f"{name}-{number:04d}.arrow")

    def add(self, name: str, table: pa.Table, ranks: np.ndarray) -> None:
        """Spill ``table``'s rows, row ``i`` of rank ``ranks[i]``."""
        numbers = np.asarray(ranks, dtype=np.int64) // self.per_file
        order = np.argsort(numbers, kind="stable")
        numbers, table = numbers[order], table.take(pa.array(order))
        bounds = np.flatnonzero(np.r_[True, numbers[1:] != numbers[:-1], True]) if len(numbers) else np.zeros(1, dtype=np.int64)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            key = (name, int(numbers[lo]))
            if key not in self._writers:
                self._writers[key] = pa.ipc.new_file(self._path(*key), table.schema, options=_OPTIONS)
            self._writers[key].write_table(table.slice(lo, hi - lo))

    def sorted_tables(self, name: str, order: list[tuple[str, str]] | None = None) -> Iterator[pa.Table]:
        """The rows spilled as ``name``, a range of ranks at a time in rank order, each range sorted by ``order``
        when given (a whole output is in order when ``order`` agrees with the ranks); each file is removed once
        read."""
        for number in range(self.files):
            writer = self._writers.pop((name, number), None)
            if writer is None:
                continue
            writer.close()
            with pa.OSFile(self._path(name, number)) as source:
                table = pa.ipc.open_file(source).read_all()
            os.remove(self._path(name, number))
            yield table.sort_by(order) if order else table

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
