"""Pretrained weights: download once, cache, verify, and load strictly.

Released files follow torch hub's naming convention ``name-<hex>.ext`` where ``<hex>`` is a prefix
(8 or more digits) of the file's SHA-256, e.g. ``bagnet32-2ddd53ed.pth.tar`` or
``resnet50-0676ba61.pth``. A file is downloaded into torch hub's cache
(``torch.hub.get_dir()/checkpoints``, which honours ``TORCH_HOME``) at most once, its hash is checked
every time it is used, and it is read with ``torch.load(..., weights_only=True)`` only. Every problem a
user can cause raises :class:`~bagrepro.core.errors.WeightsError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import pickle
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bagrepro.core.atomic import atomic_path
from bagrepro.core.cache import file_sha256
from bagrepro.core.errors import WeightsError, one_line

__all__ = [
    "WeightsSpec",
    "hash_prefix_from_filename",
    "cache_path",
    "resolve_weights_file",
    "load_state_dict",
    "load_into",
    "load_pretrained",
]

#: Seconds a single network operation (connect, read) may block while downloading.
DOWNLOAD_TIMEOUT_S = 60.0

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^-]*$")
_HEX = re.compile(r"[0-9a-f]{1,64}")
_MAX_LISTED = 5


def hash_prefix_from_filename(filename: str) -> str | None:
    """Return the SHA-256 hex prefix in a torch-hub style name (``name-<hex>.ext``), else ``None``.

    The prefix is the run of 8 to 64 lowercase hex digits after the last ``-`` and before the first
    ``.`` that follows it: ``bagnet32-2ddd53ed.pth.tar`` -> ``2ddd53ed``.
    """
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


@dataclass(frozen=True)
class WeightsSpec:
    """Where a weights file comes from and, optionally, the SHA-256 prefix it must have.

    ``sha256_prefix`` defaults to the prefix in the file name (see :func:`hash_prefix_from_filename`);
    if neither is available the file is not verified.
    """

    url: str
    sha256_prefix: str | None = None

    def __post_init__(self) -> None:
        if not self.filename:
            raise WeightsError(f"weights URL {self.url!r} does not end in a file name")
        if self.sha256_prefix is not None and not _HEX.fullmatch(self.sha256_prefix):
            raise WeightsError(
                f"sha256_prefix {self.sha256_prefix!r} for {self.url} is not 1-64 lowercase hex digits"
            )

    @property
    def filename(self) -> str:
        """The last path component of the URL (query and fragment ignored)."""
        path = urllib.parse.urlsplit(self.url).path
        return urllib.parse.unquote(posixpath.basename(path))

    @property
    def expected_prefix(self) -> str | None:
        """The SHA-256 prefix the file must have: explicit, else from the file name, else ``None``."""
        return self.sha256_prefix or hash_prefix_from_filename(self.filename)


def cache_path(spec: WeightsSpec) -> pathlib.Path:
    """Return where ``spec`` is cached: ``torch.hub.get_dir()/checkpoints/<filename>``."""
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints" / spec.filename


def _sha256(path: pathlib.Path) -> str:
    """Return the SHA-256 hex digest of the file at ``path``, read in chunks."""
    try:
        return file_sha256(path)
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path} ({one_line(e.strerror or e, 200)})") from e


def _verify(path: pathlib.Path, spec: WeightsSpec, advice: str) -> None:
    """Raise WeightsError (ending with ``advice``) if ``path`` does not have the expected hash prefix."""
    prefix = spec.expected_prefix
    if prefix is None:
        return
    digest = _sha256(path)
    if not digest.startswith(prefix):
        raise WeightsError(
            f"{path} has SHA-256 {digest[: max(len(prefix), 8)]}..., expected {prefix}...; {advice}"
        )


class _CutOff(OSError):
    """The server closed the connection before sending the announced number of bytes."""


def _fetch(url: str, dst: pathlib.Path, prefix: str | None, progress: bool) -> str:
    """Stream ``url`` into ``dst`` atomically and return its SHA-256. Written here rather than with
    ``torch.hub.download_url_to_file`` because that keeps a body cut off short of its Content-Length
    (urllib does not raise on it): a truncated checkpoint would become the cached one. A digest
    that does not start with ``prefix`` raises ValueError(digest); ``dst`` is then left alone."""
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        announced = response.headers.get("Content-Length")
        total = int(announced) if announced and announced.isdigit() else None
        with atomic_path(dst) as temporary, open(temporary, "wb") as stream, \
                tqdm(total=total, unit="B", unit_scale=True, disable=not progress or None, leave=False,
                     desc=dst.name) as bar:
            while block := response.read(1 << 20):
                stream.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
            if total is not None and received != total:
                raise _CutOff(f"the connection closed after {received} of {total} bytes")
            stream.flush()
            os.fsync(stream.fileno())
            if not digest.hexdigest().startswith(prefix or ""):
                raise ValueError(digest.hexdigest())  # nothing is renamed onto dst
    return digest.hexdigest()


def _download(spec: WeightsSpec, dst: pathlib.Path, progress: bool) -> None:
    """Download ``spec.url`` to ``dst`` (verifying its length and hash); nothing is left at ``dst`` on
    failure."""
    hint = (
        f"nothing is cached at {dst}; download the file yourself and pass --weights-dir DIR "
        f"(a folder containing {spec.filename})"
    )
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(
            f"cannot create weights cache folder {dst.parent} ({one_line(e.strerror or e, 200)}); "
            f"set TORCH_HOME to a writable folder or pass --weights-dir DIR"
        ) from e
    try:
        _fetch(spec.url, dst, spec.expected_prefix, progress)
    except (OSError, http.client.HTTPException) as e:
        # HTTPError reads best whole ("HTTP Error 404: Not Found"); URLError wraps the socket error.
        reason = e if isinstance(e, (urllib.error.HTTPError, _CutOff)) else getattr(e, "reason", None) or e
        raise WeightsError(
            f"cannot download weights from {spec.url} ({one_line(reason, 200) or type(e).__name__}); {hint}"
        ) from e
    except ValueError as e:  # the hash
        raise WeightsError(
            f"weights downloaded from {spec.url} do not have the expected SHA-256 prefix "
            f"{spec.expected_prefix} (got {str(e)[:16]}...); {hint}"
        ) from e


def resolve_weights_file(
    spec: WeightsSpec, weights_dir: str | pathlib.Path | None = None, progress: bool = True
) -> pathlib.Path:
    """Return a local, hash-verified file for ``spec``.

    With ``weights_dir``, the file must be ``<weights_dir>/<filename>`` (never downloaded). Otherwise
    the torch hub cache is used, downloading into it once if the file is not there yet.
    """
    if weights_dir is not None:
        path = pathlib.Path(weights_dir).expanduser() / spec.filename
        if not path.is_file():
            raise WeightsError(
                f"weights file {path} not found; put {spec.filename} (from {spec.url}) in {path.parent}"
            )
        _verify(path, spec, f"this is not the released file {spec.filename}; get it from {spec.url}")
        return path
    path = cache_path(spec)
    if path.is_file():
        _verify(path, spec, f"the cached file is corrupt, delete it to download {spec.url} again")
        return path
    _download(spec, path, progress)
    return path


def _unpickling_reason(e: BaseException) -> str | None:
    """If ``e`` is torch.load(weights_only=True) refusing the file's content, return a short reason."""
    text = str(e)
    if not isinstance(e, (pickle.UnpicklingError, RuntimeError)):
        return None
    if "Weights only load failed" not in text and "WeightsUnpickler error" not in text:
        return None
    _, _, rest = text.partition("WeightsUnpickler error:")
    rest = rest.strip() or text
    first = rest.splitlines()[0].strip()
    return one_line(first.split(". ")[0].rstrip("."), 160)


def _read_checkpoint(path: pathlib.Path) -> object:
    """``torch.load`` ``path`` on the CPU with ``weights_only=True``, turning failures into WeightsError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path} ({one_line(e.strerror or e, 200)})") from e
    except Exception as e:  # torch.load raises many types on foreign or corrupt files
        reason = _unpickling_reason(e)
        if reason is not None:
            raise WeightsError(
                f"{path} is not a plain state_dict that torch.load(weights_only=True) accepts ({reason})"
            ) from e
        detail = one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, 160)
        raise WeightsError(f"{path} is not a PyTorch checkpoint file ({detail})") from e


def load_state_dict(
    spec: WeightsSpec, weights_dir: str | pathlib.Path | None = None, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Resolve ``spec`` (see :func:`resolve_weights_file`) and return its state_dict as a plain dict.

    A ``{'state_dict': ...}`` wrapper is unwrapped, and a ``module.`` prefix (from DataParallel) is
    removed when every key has it. Anything other than a non-empty dict of tensors is a WeightsError.
    """
    path = resolve_weights_file(spec, weights_dir, progress)
    return _normalise(_read_checkpoint(path), str(path))


def _normalise(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Check that ``obj`` is a state_dict, unwrap ``state_dict`` and strip a common ``module.`` prefix."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{source} holds type {type(obj).__name__}, not a state_dict (a dict of tensors)")
    if not obj:
        raise WeightsError(f"{source} holds an empty dict, not a state_dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{source} is not a state_dict of tensors (entry {key!r} has type {type(value).__name__})"
            )
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _listing(items: list[str], singular: str, plural: str) -> str:
    """Format e.g. ``3 missing keys (a, b, c)``, naming at most ``_MAX_LISTED`` items."""
    shown = ", ".join(items[:_MAX_LISTED]) + (", ..." if len(items) > _MAX_LISTED else "")
    return f"{len(items)} {singular if len(items) == 1 else plural} ({shown})"


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, checking keys and shapes first.

    Any missing key, unexpected key or shape mismatch raises one WeightsError that lists them all
    (at most five names per kind). The one tolerated gap is BatchNorm's ``num_batches_tracked``,
    which checkpoints from before PyTorch 0.4.1 lack; the model's current value is kept for it.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    missing = [k for k in own if k not in sd]
    for k in [k for k in missing if k.endswith(".num_batches_tracked")]:
        sd[k] = own[k]
        missing.remove(k)
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        _listing(items, singular, plural)
        for items, singular, plural in [
            (missing, "missing key", "missing keys"),
            (unexpected, "unexpected key", "unexpected keys"),
            (mismatched, "shape mismatch", "shape mismatches"),
        ]
        if items
    ]
    if problems:
        raise WeightsError(f"{source} does not match {type(model).__name__}: {', '.join(problems)}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{source} cannot be loaded into {type(model).__name__} ({one_line(e, 200)})") from e


def load_pretrained(
    model: torch.nn.Module,
    spec: WeightsSpec,
    weights_dir: str | pathlib.Path | None = None,
    progress: bool = True,
    transform=None,
) -> pathlib.Path:
    """Resolve, read and strictly load ``spec`` into ``model``; return the weights file used.

    ``transform``: optional ``state_dict -> state_dict`` applied before loading (key renames of an
    old checkpoint format).
    """
    path = resolve_weights_file(spec, weights_dir, progress)
    state_dict = _normalise(_read_checkpoint(path), str(path))
    if transform is not None:
        state_dict = transform(state_dict)
    load_into(model, state_dict, str(path))
    return path
