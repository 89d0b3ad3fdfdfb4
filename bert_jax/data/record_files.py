"""Random access to the serialized records of one corpus split (its array_record shards), on the calling thread.

TFDS's and array_record's own data sources read a batch of keys through a thread pool: a Python
`ThreadPoolExecutor` made and joined per call, and inside it the reader's C++ pool. For a batch of a few hundred
small records that costs about twice the CPU of the reading itself (measured on this corpus, 256 records of
~600 bytes: 2.0 ms wall and 2.8 ms CPU through TFDS, 1.0 ms and 1.0 ms here), and the extra threads compete
with the batch worker processes, which are the input's parallelism. `RecordFiles` seeks and reads each record
in turn instead, with readers tuned for random access.

Readers are opened on first use in each process and are not pickled, so a worker process gets its own; a lock
makes one instance safe to share between threads (a reader's position is state).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from array_record.python import array_record_module

# No read-ahead and no reader thread pool: each record is one seek and one read of its chunk.
RANDOM_ACCESS_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
FILE_BUFFER_BYTES = 32 << 10  # a chunk holds one ~600-byte record (`split_files.ARRAY_RECORD_OPTIONS`)


class RecordFiles:
    """The records of `paths` (array_record files holding `lengths` records each) as one indexable sequence."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], lengths: Sequence[int]) -> None:
        if len(paths) != len(lengths):
            raise ValueError(f"{len(paths)} record files but {len(lengths)} lengths")
        self.paths = [os.fspath(path) for path in paths]
        self.lengths = [int(length) for length in lengths]
        self._ends = np.cumsum(self.lengths, dtype=np.int64)
        self._readers: list[Any] = [None] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def read(self, indices: Sequence[int]) -> list[bytes]:
        """The records at global `indices`, in that order."""
        keys = np.asarray(indices, dtype=np.int64).reshape(-1)
        if keys.size and (keys.min() < 0 or keys.max() >= len(self)):
            bad = int(keys[(keys < 0) | (keys >= len(self))][0])
            raise IndexError(f"record {bad} is out of range: the split has {len(self)} records")
        files = np.searchsorted(self._ends, keys, side="right")
        positions = keys - np.where(files > 0, self._ends[np.maximum(files - 1, 0)], 0)
        records = []
        with self._lock:
            for file_index, position in zip(files.tolist(), positions.tolist(), strict=True):
                reader = self._reader(file_index)
                reader.seek(position)
                records.append(reader.read())
        return records

    def close(self) -> None:
        """Closes the open readers (they reopen on the next read)."""
        with self._lock:
            for index, reader in enumerate(self._readers):
                if reader is not None:
                    reader.close()
                    self._readers[index] = None

    def _reader(self, file_index: int) -> Any:
        reader = self._readers[file_index]
        if reader is None:
            reader = array_record_module.ArrayRecordReader(
                self.paths[file_index], options=RANDOM_ACCESS_OPTIONS, file_reader_buffer_size=FILE_BUFFER_BYTES
            )
            self._readers[file_index] = reader
        return reader

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "lengths": self.lengths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"], state["lengths"])
