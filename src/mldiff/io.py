"""Atomic NetCDF writes, provenance attributes and checked loading.

Every file the pipeline writes goes through :func:`atomic_path`: the content is written to a
temporary sibling and renamed into place only when complete, so a killed step never leaves a
file that a later step (or Snakemake/DVC) would take as done.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mldiff import __version__
from mldiff.errors import MldiffError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched; temporaries
    of writers that were killed outright (SIGKILL) are removed by the next write.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
    except OSError as exc:
        raise MldiffError(f"{path}: cannot create or clean its folder ({_reason(exc)})") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # ENOSPC, EROFS, EDQUOT, EACCES...: one line, no partial file
        raise MldiffError(f"{path}: cannot write ({_reason(exc)})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed write, found also in a library's wrapped error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def write_failed(path: str | os.PathLike, exc: BaseException) -> MldiffError:
    """A writer library's error (netCDF4/HDF5 reports a full disk as ``RuntimeError: NetCDF:
    HDF error``) as one line naming ``path`` and the space left there."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free} bytes free there"
    except OSError:
        free = "its folder is gone"
    return MldiffError(f"{path}: cannot write ({_reason(exc)}; {free})")


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by writers that were killed (their pid is gone)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard(path: str | os.PathLike) -> None:
    """Delete ``path`` and any temporaries that killed writers left beside it."""
    path = Path(path)
    path.unlink(missing_ok=True)
    if path.parent.is_dir():
        _remove_stale_temporaries(path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (JSON, CSV, HTML) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def git_revision() -> str:
    """The git revision of the working tree that runs the code, ``"unknown"`` outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Attributes recording who made a file: package and library versions, git rev, params."""
    import netCDF4
    import torch

    attrs = {
        "mldiff_version": __version__,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "xarray_version": xr.__version__,
        "netcdf4_version": netCDF4.__version__,
        "history": f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} mldiff",
    }
    if params is not None:
        attrs["params"] = json.dumps(params, sort_keys=True)
    return attrs


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike, chunk_dim: str = "sample") -> None:
    """Write ``ds`` to NetCDF4 atomically, zlib-compressed and chunked one ``chunk_dim`` per chunk.

    Data variables with ``chunk_dim`` get chunks of size 1 along it and full size elsewhere.
    The SHA-256 of the data variables goes into ``attrs["mldiff_sha256"]``, that of the other
    global attributes into ``attrs["mldiff_attrs_sha256"]``; :func:`open_dataset` verifies
    both (a hand-edited ``level`` is as much a modification as an edited value).
    """
    encoding = {}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {"zlib": True, "complevel": 4, "shuffle": True}
        if chunk_dim in var.dims:
            enc["chunksizes"] = tuple(1 if d == chunk_dim else ds.sizes[d] for d in var.dims)
        encoding[name] = enc
    ds = ds.copy()
    ds.attrs.setdefault("Conventions", "CF-1.10")
    ds.attrs[CHECKSUM_ATTR] = checksum(ds)
    ds.attrs[ATTRS_CHECKSUM_ATTR] = attrs_checksum(ds.attrs)
    with atomic_path(path) as tmp:
        try:
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        except RuntimeError as exc:
            raise write_failed(path, exc) from None


CHECKSUM_ATTR = "mldiff_sha256"
ATTRS_CHECKSUM_ATTR = "mldiff_attrs_sha256"


def checksum(ds: xr.Dataset) -> str:
    """SHA-256 of every data variable's name, dtype, shape and values (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(map(str, ds.data_vars)):
        values = np.ascontiguousarray(ds[name].values)
        digest.update(f"{name}|{values.dtype.str}|{values.shape}|".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """An attribute as NetCDF gives it back: numpy scalars and arrays as Python values, a
    one-element list as its element."""
    if isinstance(value, np.ndarray | list | tuple):
        items = [_plain(v) for v in value]
        return items[0] if len(items) == 1 else items
    return value.item() if isinstance(value, np.generic) else value


def attrs_checksum(attrs: Mapping[str, Any]) -> str:
    """SHA-256 of the global attributes (the checksum attributes excepted), as plain JSON."""
    plain = {str(k): _plain(v) for k, v in attrs.items()
             if k not in (CHECKSUM_ATTR, ATTRS_CHECKSUM_ATTR)}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


_REQUIRED = object()


def attr(attrs: Mapping[str, Any], path: str | os.PathLike, name: str, kind: Any = str,
         default: Any = _REQUIRED) -> Any:
    """Attribute ``name`` of the file at ``path``, parsed defensively as ``kind``: ``int``
    (integral, at most 64 bits), ``float`` (finite), ``str``, ``"words"`` (a space-separated
    list of names) or ``"json"`` (a JSON object). A missing attribute gives ``default`` or, when
    there is none, like a malformed one, one line naming the file and the attribute."""
    if name not in attrs:
        if default is not _REQUIRED:
            return default
        raise MldiffError(f"{path}: attribute {name!r} is missing (not written by this mldiff)")
    value = _plain(attrs[name])
    expected = {int: "an integer", float: "a finite number", str: "text",
                "words": "space-separated names", "json": "a JSON object"}[kind]
    try:
        if kind is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ValueError
            if not (math.isfinite(number) and number == int(number)
                    and abs(int(number)) < 2**63):
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if not isinstance(value, str):
            raise ValueError
        if kind == "words":
            if not value.split():
                raise ValueError
            return value.split()
        if kind == "json":
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError
            return parsed
        return value
    except (ValueError, TypeError, OverflowError):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise MldiffError(f"{path}: attribute {name!r} is {shown}, expected {expected}"
                          ) from None


def open_dataset(
    path: str | os.PathLike,
    variables: tuple[str, ...] = (),
    dims: tuple[str, ...] = (),
    engine: str | None = None,
) -> xr.Dataset:
    """Open and load ``path`` as an xarray Dataset, checking what the caller relies on.

    Raises :class:`MldiffError` naming the file when it is missing, unreadable, fails the
    checksum recorded by :func:`write_netcdf`, lacks one of ``variables`` or ``dims``, or
    holds non-finite values in ``variables``.
    """
    path = Path(path)
    if not path.exists():
        raise MldiffError(f"{path}: file not found")
    try:
        with xr.open_dataset(path, engine=engine) as ds:
            ds = ds.load()
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MldiffError(f"{path}: not a readable NetCDF/HDF5 dataset ({first})") from None
    recorded = ds.attrs.get(CHECKSUM_ATTR)
    if recorded is not None and recorded != checksum(ds):
        raise MldiffError(f"{path}: checksum mismatch (the file was modified or corrupted)")
    recorded = ds.attrs.get(ATTRS_CHECKSUM_ATTR)
    if recorded is not None and recorded != attrs_checksum(ds.attrs):
        raise MldiffError(f"{path}: attribute checksum mismatch (attributes were edited)")
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise MldiffError(
            f"{path}: missing variable(s) {missing}; it has {sorted(map(str, ds.data_vars))}"
        )
    missing = [d for d in dims if d not in ds.dims]
    if missing:
        raise MldiffError(f"{path}: missing dimension(s) {missing}; it has {sorted(ds.dims)}")
    for v in variables:
        if not np.isfinite(ds[v].values).all():
            raise MldiffError(f"{path}: variable {v!r} contains NaN or inf values")
    return ds
