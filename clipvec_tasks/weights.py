"""Where a member's weights come from: a registry tag, a checkpoint, or seeded random.

Tags are fetched by the family library's own downloader into ``cache_dir``
(optionally from a shared fsspec mirror first, so many workers do not all hit
the hub). Checkpoints are state_dicts read without executing pickled code.
Every loaded file's sha256 is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import ClipvecError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
DEFAULT_CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "clipvec"
)


@dataclass(frozen=True, slots=True)
class WeightsRef:
    """A parsed ``pretrained`` value: kind is ``tag``, ``checkpoint`` or ``random``."""

    kind: str
    value: str
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ResolvedWeights:
    """Weights made available locally: ``path`` is None for random init."""

    ref: WeightsRef
    path: str | None
    sha256: str | None

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"kind": self.ref.kind, "pretrained": self.ref.kind != "random"}
        if self.ref.kind == "random":
            d["seed"] = self.ref.seed
        elif self.ref.kind == "tag":
            d["tag"] = self.ref.value
        else:
            d["source"] = _redact(self.ref.value)
        d["sha256"] = self.sha256
        return d


def parse_pretrained(value: object, default_tag: str, seed: int = 0) -> WeightsRef:
    """Read a member's ``pretrained`` setting.

    ``None``/``default`` -> the registry tag; ``random`` -> seeded random init;
    a path or URI (or any value ending in a checkpoint suffix) -> checkpoint;
    anything else -> another tag of the same family.
    """
    if value is None or str(value).strip() in ("", "default"):
        return WeightsRef("tag", default_tag)
    text = str(value).strip()
    if text == "random":
        return WeightsRef("random", "random", seed)
    if text.lower().endswith(CHECKPOINT_SUFFIXES) or "://" in text or os.sep in text:
        return WeightsRef("checkpoint", text)
    return WeightsRef("tag", text)


def sha256_file(path: str | os.PathLike[str], chunk: int = 8 << 20,
                cache_dir: str | None = None) -> str:
    """The file's sha256; with ``cache_dir``, remembered by (path, size, mtime)."""
    memo = None
    if cache_dir:
        st = os.stat(path)
        key = hashlib.sha1(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
        memo = Path(cache_dir) / "sha256" / key.hexdigest()
        if memo.is_file():
            return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        with contextlib.suppress(OSError):
            _atomic_copy(lambda tmp: Path(tmp).write_text(digest), memo)
    return digest


def fetch_checkpoint(
    uri: str, cache_dir: str, storage_options: dict[str, object] | None = None
) -> str:
    """A local path for checkpoint ``uri``; remote files are copied into the cache once."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = os.path.expanduser(parsed.path if parsed.scheme == "file" else uri)
        if not os.path.isfile(path):
            raise ClipvecError(
                f"Checkpoint file '{path}' does not exist. Give the path of a state_dict "
                f"({', '.join(CHECKPOINT_SUFFIXES)}) of the member's architecture, "
                "or use pretrained=random."
            )
        return path
    import fsspec

    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = Path(cache_dir) / "checkpoints" / key / os.path.basename(parsed.path)
    if dest.is_file():
        return str(dest)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        _atomic_copy(lambda tmp: fs.get_file(path, tmp), dest)
    except FileNotFoundError as e:
        raise ClipvecError(f"Checkpoint '{_redact(uri)}' was not found.") from e
    except OSError as e:
        raise ClipvecError(f"Checkpoint '{_redact(uri)}' could not be read: {e}") from e
    return str(dest)


def load_state_dict(path: str) -> dict[str, object]:
    """Read a state_dict without executing pickled code.

    safetensors files are read as such; other files with ``weights_only=True``;
    TorchScript archives (OpenAI's released ``.pt``) through ``torch.jit.load``,
    which reads tensors and TorchScript code but never unpickles Python objects.
    """
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd: dict[str, object] = load_file(path, device="cpu")
    elif _is_torchscript(path):
        sd = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError or RuntimeError
            raise ClipvecError(
                f"'{path}' is not a plain state_dict that can be read safely "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). clipvec never executes "
                "pickled code: save the weights with torch.save(model.state_dict(), ...) or "
                "safetensors."
            ) from e
        sd = obj
    for key in ("state_dict", "model", "module"):
        inner = sd.get(key) if isinstance(sd, dict) else None
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            sd = inner
            break
    if not isinstance(sd, dict):
        raise ClipvecError(f"'{path}' does not hold a state_dict (found {type(sd).__name__}).")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _is_torchscript(path: str) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or n.split("/")[-2:-1] == ["code"]
                   for n in z.namelist())


def fetch_tag(
    family: str,
    arch: str,
    tag: str,
    relname: str,
    download: Callable[[str], str],
    cache_dir: str,
    mirror: str | None,
    url: str | None,
    storage_options: dict[str, object] | None = None,
    expected_sha256: str | None = None,
) -> str:
    """A local path for a tagged weights file.

    Order: our flat cache (``cache_dir/weights/relname``), then the mirror at
    ``mirror/relname``, then the family library's own downloader (``download``,
    called with ``cache_dir``; it verifies hashes where its registry knows them).
    After a download the file is published to the mirror when one is set. A file
    from the mirror is checked against ``expected_sha256`` (a digest or its prefix,
    as the family's registry gives it) before it is used.
    """
    flat = Path(cache_dir) / "weights" / relname
    if flat.is_file():
        return str(flat)
    if mirror:
        import fsspec

        fs, base = fsspec.core.url_to_fs(mirror, **(storage_options or {}))
        remote = f"{base.rstrip('/')}/{relname}"
        if fs.exists(remote):
            def fetch_checked(tmp: str) -> None:
                fs.get_file(remote, tmp)
                got = sha256_file(tmp)
                if expected_sha256 and not got.startswith(expected_sha256.lower()):
                    raise ClipvecError(
                        f"The mirror's copy of {relname} is corrupt (sha256 {got[:16]}..., "
                        f"expected {expected_sha256[:16]}...). Replace it in {_redact(mirror)}.")
            _atomic_copy(fetch_checked, flat)
            return str(flat)
    if url and not _host_resolves(url):
        raise _offline_error(family, arch, tag, cache_dir, mirror, f"cannot resolve {_host(url)}")
    try:
        path = download(cache_dir)
    except ClipvecError:
        raise
    except Exception as e:  # the libraries raise URLError, OSError, HF errors, RuntimeError
        raise _offline_error(family, arch, tag, cache_dir, mirror, str(e).splitlines()[0]) from e
    if mirror:  # publish for the next worker; a read-only mirror is not an error
        try:
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(path, remote)
        except (PermissionError, OSError):
            pass
    return path


def expected_hash(url: str | None) -> str | None:
    """The sha256 (or its prefix) that a weights URL names, as the libraries' conventions go:
    a 64-hex folder (OpenAI) or a ``-<hex>`` suffix of the file name (torchvision, open_clip)."""
    if not url:
        return None
    parts = url.rstrip("/").split("/")
    if len(parts) >= 2 and len(parts[-2]) == 64 and _is_hex(parts[-2]):
        return parts[-2]
    stem = parts[-1].rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return tail if len(tail) >= 8 and _is_hex(tail) else None


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)


def _offline_error(
    family: str, arch: str, tag: str, cache_dir: str, mirror: str | None, why: str
) -> ClipvecError:
    where = f"the cache ({cache_dir})" + (f" or the mirror ({_redact(mirror)})" if mirror else "")
    return ClipvecError(
        f"Weights '{tag}' for {family} {arch} are not in {where} and could not be "
        f"downloaded ({why[:160]}). Either run once with network access to fill "
        "weights.cache_dir (or point weights.mirror at a bucket holding them), give a "
        "checkpoint file: model.members.N.pretrained=/path/to/state_dict.safetensors "
        "(.pt/.pth/.bin also read), or use model.members.N.pretrained=random for tests and "
        "demos (random weights, recorded as not pretrained)."
    )


def _host(url: str) -> str:
    return urlparse(url).hostname or url


def _host_resolves(url: str) -> bool:
    """Fail fast offline: a host that does not resolve is not retried for a minute."""
    host = _host(url)
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "huggingface" in host:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _atomic_copy(write: Callable[[str], object], dest: Path) -> None:
    """Write through a temporary file, then rename: no half-file at ``dest`` ever."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _redact(uri: str | None) -> str:
    """Drop any user:password@ part of a URI before it is logged or recorded."""
    if not uri:
        return ""
    p = urlparse(uri)
    if p.username or p.password:
        return p._replace(netloc=p.hostname or "").geturl()
    return uri
