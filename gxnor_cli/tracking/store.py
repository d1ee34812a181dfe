"""Where runs live and how to reach them: the tracking store and the local checkpoints.

A :class:`Store` is a tracking URI plus the local directory gxnor writes into:

    uri      tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<abs out_dir>/mlflow.db
    out_dir  <out_dir>/checkpoints/<run id>/{last,best}.pt; artifacts of a local sqlite
             store under <out_dir>/artifacts

A checkpoint records its store (``tracking_uri``, ``out_dir``), so ``trainer.resume=PATH``,
``gxnor eval PATH`` and ``gxnor export PATH`` reach the run from any directory.

First use of a sqlite store creates and migrates its schema (seconds); two processes doing
that at once break it, so :meth:`Store.first_use` holds an exclusive lock file beside the
database while it happens.  This module does not import mlflow (:mod:`.client` does).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from ..errors import UserError

SQLITE = "sqlite:///"


class StoreError(UserError):
    """A tracking store or runs directory that cannot be used."""


@dataclass(frozen=True)
class Store:
    uri: str
    out_dir: Path

    @classmethod
    def of(cls, uri: Optional[str] = None, out_dir: str | Path = "runs") -> "Store":
        out = Path(out_dir).expanduser().resolve()
        return cls(uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{out / 'mlflow.db'}", out)

    @classmethod
    def of_config(cls, cfg) -> "Store":
        return cls.of(cfg.tracking.uri, cfg.trainer.out_dir)

    @classmethod
    def of_payload(cls, payload: dict, fallback: "Store") -> "Store":
        """The store a checkpoint was written for (older checkpoints: ``fallback``)."""
        if payload.get("tracking_uri") and payload.get("out_dir"):
            return cls(payload["tracking_uri"], Path(payload["out_dir"]))
        return fallback

    # -- the tracking side --------------------------------------------------------------
    @property
    def sqlite_path(self) -> Optional[Path]:
        """The database file of a sqlite store, else None."""
        return Path(self.uri[len(SQLITE):]) if self.uri.startswith(SQLITE) else None

    @property
    def is_remote(self) -> bool:
        return urlparse(self.uri).scheme in ("http", "https")

    @property
    def artifact_location(self) -> Optional[str]:
        """Where a new experiment keeps artifacts: <out_dir>/artifacts for a local sqlite store
        (a server or $MLFLOW_ARTIFACT_ROOT decides for itself)."""
        if self.sqlite_path is not None and not os.environ.get("MLFLOW_ARTIFACT_ROOT"):
            return (self.out_dir / "artifacts").as_uri()
        return None

    def exists(self) -> bool:
        """False only for a sqlite store whose file is not there yet."""
        return self.sqlite_path is None or self.sqlite_path.is_file()

    def describe(self) -> str:
        return str(self.sqlite_path) if self.sqlite_path is not None else self.uri

    @contextlib.contextmanager
    def first_use(self) -> Iterator[None]:
        """Hold an exclusive lock on a sqlite store while it may be created or migrated.

        Raises StoreError (one line) when its directory cannot be made or written."""
        path = self.sqlite_path
        if path is None:
            yield
            return
        import fcntl

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.parent / f".{path.name}.lock", "a+")
        except OSError as err:
            raise StoreError(f"cannot use the runs directory {path.parent}: {err.strerror or err}") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the checkpoint side --------------------------------------------------------------
    def checkpoint_dir(self, run_id: str) -> Path:
        return self.out_dir / "checkpoints" / run_id

    def check_writable(self) -> None:
        """StoreError (one line) unless checkpoints can be written under the runs directory:
        said before a run is created, not after its first epoch."""
        folder = self.out_dir / "checkpoints"
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise StoreError(f"the runs directory {self.out_dir} is a file; remove it or set trainer.out_dir")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise StoreError(f"cannot write checkpoints under {folder}: {err.strerror or err}") from None
