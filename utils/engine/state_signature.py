"""Signing the sharded resumable state, so that resuming never unpickles a file this account did not write.

``torch.distributed.checkpoint`` keeps its metadata (and any non-tensor value) as pickles, which torch
reads with plain :func:`pickle.load` (torch 2.13): loading a crafted ``sharded-step-N/`` would run its
code. A checksum stored beside the files protects nothing, since whoever writes the folder writes the
checksum too. So the folder is signed with an HMAC-SHA256 under a key kept *outside* every run folder
(``~/.cache/minidisc/resume.key``, created on the first save, readable by its owner only; the environment
variable ``MINIDISC_RESUME_KEY`` names another key file), and a folder whose signature does not verify is
refused before anything in it is read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from utils.errors import RunError

KEY_ENV = "MINIDISC_RESUME_KEY"
SIGNATURE_FILE = "signature.hmac"
_KEY_BYTES = 32


def key_path() -> Path:
    """The key file: ``$MINIDISC_RESUME_KEY``, else ``minidisc/resume.key`` in the user's cache directory."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "minidisc" / "resume.key"


def _create_key(path: Path) -> None:
    """Write a new random key, readable by its owner only; a key another process wrote first is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(_KEY_BYTES))
    try:
        os.link(tmp, path)  # atomic, and fails if a concurrent run created the key first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _read_key(create: bool) -> bytes | None:
    path = key_path()
    if not path.exists():
        if not create:
            return None
        _create_key(path)
    key = path.read_bytes()
    if len(key) < _KEY_BYTES:
        raise RunError(f"the resume key {path} holds {len(key)} bytes, fewer than {_KEY_BYTES}: delete it (a new one "
                       "is made on the next save; states signed with it can then not be resumed)")
    return key


def _digest(folder: Path, key: bytes) -> str:
    """HMAC-SHA256 over every file's relative name and SHA-256, in name order (the signature file aside)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SIGNATURE_FILE):
        content = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                content.update(chunk)
        # a name never holds NUL and a digest has a fixed length, so the sequence reads one way only
        mac.update(file.relative_to(folder).as_posix().encode() + b"\0" + content.digest())
    return mac.hexdigest()


def sign_folder(folder: Path) -> None:
    """Sign every file in ``folder`` (creating the key on first use)."""
    folder = Path(folder)
    (folder / SIGNATURE_FILE).write_text(_digest(folder, _read_key(create=True)) + "\n")


def verify_folder(folder: Path) -> None:
    """Raise :class:`RunError` unless ``folder``'s files are exactly those :func:`sign_folder` signed under this key."""
    folder = Path(folder)
    advice = "pass --overwrite_output_dir to start afresh, or choose another --output_dir"
    key = _read_key(create=False)
    if key is None:
        raise RunError(f"{folder} cannot be verified: the resume key {key_path()} is missing (a sharded state resumes "
                       f"only where the account that wrote it keeps its key, see docs/runs.md): {advice}")
    signature = folder / SIGNATURE_FILE
    if not signature.is_file() or not hmac.compare_digest(signature.read_text().strip(), _digest(folder, key)):
        raise RunError(f"{folder} is not signed by the resume key {key_path()} (it was changed, or written by another "
                       f"account or machine), and its pickled metadata could run code: refusing to load it; {advice}")
