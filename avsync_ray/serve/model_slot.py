"""One replica's model and where it comes from: a folder, an MLflow registry URI (``models:/avsyncd@champion``,
resolved with ``tracking.resolve_model``) or a preset built at start. A new source is resolved and loaded
while the current model keeps serving, then swapped in; an alias can be re-read on a timer, so moving it in
the registry swaps the served version without restarting anything. Each load also reads where the model comes from
(``lineage.served_lineage``: its LoggedModel, training run, step and dataset), once, so every request reports it
for free and a swap reports the new model's.

Registry downloads and presets go to the replica's working folder (``avsync-serve-<role>-*`` in the temp folder),
removed when the replica stops; a replica that died without stopping leaves it behind, so every replica starting
on a node removes the folders whose owner is gone (each holds a lock on its folder while its process lives)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from avsync_ray.config.base import validate_config
from avsync_ray.config.serve import PRESET_PREFIX, ModelSourceConfig
from avsync_ray.lineage import no_lineage, served_lineage
from avsync_ray.tracking import ModelSource, is_registry_uri, registry_version, resolve_model

logger = logging.getLogger("ray.serve")


WORKDIR_PREFIX = "avsync-serve-"
OWNER_LOCK = ".owner"  # locked by the replica that owns the folder, as long as its process lives


def owned_workdir(role: str):
    """(a new working folder for a replica, the open lock file that marks it as alive). The folder gets its
    final name only once the lock is held, so a sweep never takes a live replica's folder for an orphan."""
    staging = Path(tempfile.mkdtemp(prefix=f".{WORKDIR_PREFIX}{role}-"))
    owner = open(staging / OWNER_LOCK, "w")
    fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    workdir = staging.with_name(staging.name[1:])
    staging.rename(workdir)
    return workdir, owner


def sweep_orphaned_workdirs(temp_dir: str | None = None) -> list[Path]:
    """Remove the working folders whose owner lock nobody holds (their replica died: a crash, a kill, a restart);
    returns them. Folders without a lock (not made by :func:`owned_workdir`) are left alone."""
    removed = []
    for folder in sorted(Path(temp_dir or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*")):
        try:
            with open(folder / OWNER_LOCK) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live replica (this process too): refused
                shutil.rmtree(folder, ignore_errors=True)
        except (BlockingIOError, FileNotFoundError, NotADirectoryError):
            continue
        removed.append(folder)
    if removed:
        logger.info("removed %d working folder(s) of replicas that are gone: %s", len(removed), ", ".join(map(str, removed)))
    return removed


@dataclass
class LoadedModel:
    model: Any
    source: ModelSource
    loaded_at: float
    lineage: dict  # lineage.served_lineage of the source, read when it was loaded
    download_dir: str | None = None  # a registry download of ours, removed when the model is swapped out


class ModelSlot:
    """The model a replica serves. ``presets`` maps a preset name to a function writing that preset's folder."""

    def __init__(self, role: str, loader: Callable[[str], Any], presets: dict[str, Callable[[Path], Any]]):
        self.role, self.loader, self.presets = role, loader, presets
        self.loaded: LoadedModel | None = None
        self.config: ModelSourceConfig | None = None
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        sweep_orphaned_workdirs()
        self._workdir, self._owner = owned_workdir(role)

    # ---------------------------------------------------------------------------------- resolving

    def _resolve(self, config: ModelSourceConfig) -> tuple[ModelSource, str | None]:
        """(where the model is on this machine, our download folder to remove later if any). Blocking."""
        source = config.source
        if source.startswith(PRESET_PREFIX):
            name = source[len(PRESET_PREFIX) :]
            if name not in self.presets:
                raise ValueError(f"{self.role} source {source!r}: no such preset; choose one of {[PRESET_PREFIX + p for p in self.presets]}")
            folder = self._workdir / f"preset-{name}"
            if not folder.is_dir():
                self.presets[name](folder)
            return ModelSource(path=str(folder), uri=source, name=name), None
        if is_registry_uri(source):
            download = tempfile.mkdtemp(dir=self._workdir, prefix="registry-")
            return resolve_model(source, config.tracking_uri, download_to=download), download
        if not Path(source).is_dir():
            raise FileNotFoundError(f"{self.role} source {source!r} is not a folder on this machine (nor a models:/ URI or {PRESET_PREFIX}<name>)")
        return ModelSource(path=str(Path(source).resolve()), uri=source, name=Path(source).name), None

    @staticmethod
    def _lineage(source: ModelSource, config: ModelSourceConfig) -> dict:
        """Where the model comes from (a preset: nowhere, its weights are random). Blocking."""
        if source.uri.startswith(PRESET_PREFIX):
            return no_lineage("a preset: random weights, never trained")
        return served_lineage(source, config.tracking_uri)

    def _is_current(self, config: ModelSourceConfig) -> bool:
        """Whether ``config`` names the model already loaded (for an alias: the version it points at now)."""
        if self.loaded is None or config.source != self.loaded.source.uri:
            return False
        return not is_registry_uri(config.source) or registry_version(config.source, config.tracking_uri) == self.loaded.source.version

    # ---------------------------------------------------------------------------------- swapping

    async def apply(self, user_config: dict) -> None:
        """Serve the model ``user_config`` (a :class:`ModelSourceConfig`) names: load it beside the current one,
        then swap. ``source: null`` empties the slot. Raises (the current model stays) when it cannot load."""
        config = validate_config(ModelSourceConfig, user_config)
        async with self._lock:
            await self._load(config)
            self.config = config
        self._restart_poller()

    async def _load(self, config: ModelSourceConfig) -> None:
        if config.source is None:
            self._swap_in(None)
            return
        if await asyncio.to_thread(self._is_current, config):
            return
        source, download = await asyncio.to_thread(self._resolve, config)
        try:
            model = await asyncio.to_thread(self.loader, source.path)
            lineage = await asyncio.to_thread(self._lineage, source, config)
        except BaseException:
            if download:
                shutil.rmtree(download, ignore_errors=True)
            raise
        self._swap_in(LoadedModel(model=model, source=source, loaded_at=time.time(), lineage=lineage, download_dir=download))
        logger.info("%s model %s (version %s) loaded from %s", self.role, source.uri, source.version, source.path)

    def _swap_in(self, loaded: LoadedModel | None) -> None:
        previous, self.loaded = self.loaded, loaded
        if previous is not None and previous.download_dir:
            shutil.rmtree(previous.download_dir, ignore_errors=True)

    def _restart_poller(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        config = self.config
        if config is not None and config.poll_registry_s and config.source and is_registry_uri(config.source):
            self._poller = asyncio.get_running_loop().create_task(self._poll(config))

    async def _poll(self, config: ModelSourceConfig) -> None:
        """Re-read the alias every ``poll_registry_s``; swap when it points at another version."""
        while True:
            await asyncio.sleep(config.poll_registry_s)
            try:
                async with self._lock:
                    await self._load(config)
            except Exception as exc:  # a registry hiccup keeps the current model; the next poll tries again
                logger.warning("%s: re-reading %s failed, keeping the current model: %s", self.role, config.source, exc)

    def close(self) -> None:
        """Stop polling and remove the working folder (its downloads and presets). Idempotent."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        shutil.rmtree(self._workdir, ignore_errors=True)
        self._owner.close()

    # ---------------------------------------------------------------------------------- reporting

    def describe(self) -> dict:
        """ModelView fields of the loaded model (just the configured source while none is loaded)."""
        if self.loaded is None:
            return {"role": self.role, "source": self.config.source if self.config else None}
        source = self.loaded.source
        return {
            "role": self.role,
            "name": source.name,
            "source": source.uri,
            "version": source.version,
            "alias": source.alias,
            "run_id": source.run_id,
            "path": source.path,
            "loaded_at": datetime.fromtimestamp(self.loaded.loaded_at, timezone.utc).isoformat(timespec="seconds"),
            "lineage": self.loaded.lineage,
        }
