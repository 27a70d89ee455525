"""Named checkpoints: the published MERT-v1, MERT-v2 and MuQ releases (pinned to a commit where one is public), plus
entries users add themselves.

A name (``MERT-v1-95M``, any capitalisation, or an alias such as the hub id ``m-a-p/MERT-v1-95M``) stands for a
source (a Hugging Face repo id or an ``http(s)://`` URL) with the revision and digest to check it against.
:func:`mert.hub.resolve_source` looks names up here before it treats a string as a hub id, so
``Encoder.from_pretrained("MERT-v1-95M")`` and ``mert download MERT-v1-95M`` fetch exactly the pinned commit.

User entries live in a JSON file: ``$MERT_REGISTRY`` if set, else ``$XDG_CONFIG_HOME/mert/registry.json``
(default ``~/.config/mert/registry.json``). It is configuration, not cache, so clearing the download cache
keeps it. Its shape is ``{name: {"source": ..., "revision": ..., "sha256": ..., "licence": ...,
"description": ...}}``; only ``source`` is required, and a URL source needs a ``sha256``. This module only
reads and writes that file: nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The weight files a checkpoint folder or hub repo may hold, the first present one wins.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

__all__ = [
    "WEIGHT_FILES",
    "CheckpointEntry",
    "builtin_checkpoints",
    "list_checkpoints",
    "lookup_checkpoint",
    "register_checkpoint",
    "registry_path",
    "unregister_checkpoint",
]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")  # no "/": a name must never be mistaken for a hub id or a path
_FIELDS = ("source", "revision", "sha256", "licence", "description")


@dataclass(frozen=True)
class CheckpointEntry:
    """One named checkpoint.

    Attributes:
        name: the registry name; lookups ignore case.
        source: a Hugging Face repo id (``owner/name``) or an ``http(s)://`` URL of a weights file or archive.
        revision: branch, tag or commit of a hub repo; built-in entries pin a 40-hex commit.
        sha256: expected hex digest of the downloaded file (a URL's file, or a hub repo's weights file);
            required for URL entries, optional for hub entries.
        licence: licence of the weights, as the publisher states it.
        description: one line for listings.
        aliases: other names that resolve to this entry (case-insensitive), e.g. the hub id.
        sample_rate: input rate in Hz the model expects, when known.
        parameters: encoder parameter count, when known.
        builtin: shipped with the library (cannot be overwritten or removed).
    """

    name: str
    source: str
    revision: str | None = None
    sha256: str | None = None
    licence: str = "unknown"
    description: str = ""
    aliases: tuple[str, ...] = ()
    sample_rate: int | None = None
    parameters: int | None = None
    builtin: bool = False

    @property
    def is_url(self) -> bool:
        """True for an ``http(s)://`` source, False for a hub repo id."""
        return is_url(self.source)

    @property
    def pinned(self) -> bool:
        """True when the entry names one immutable version: a commit for hub repos, a digest for URLs."""
        if self.is_url:
            return self.sha256 is not None
        return self.revision is not None and COMMIT.match(self.revision) is not None

    def names(self) -> tuple[str, ...]:
        """The name and the aliases."""
        return (self.name, *self.aliases)

    def to_json(self) -> dict[str, str]:
        """The fields a user registry file stores (empty ones left out)."""
        return {k: v for k in _FIELDS if (v := getattr(self, k)) not in (None, "", "unknown")}


# Revisions: the commit each repo's files were published under. They come from public pins of these repos
# (snapshot folders and `revision=` arguments in several independent projects); the build machine has no
# network access, so they were not re-checked against the Hub itself. See docs/checkpoints.md.
# Both releases: the m-a-p organisation's repo of the same name (also accepted as an alias), CC-BY-NC-4.0, 24 kHz.
_BUILTIN = tuple(
    CheckpointEntry(
        name=name,
        source=f"m-a-p/{name}",
        revision=revision,
        licence="CC-BY-NC-4.0",
        description=description,
        aliases=(f"m-a-p/{name}",),
        sample_rate=24000,
        parameters=parameters,
        builtin=True,
    )
    for name, revision, parameters, description in (
        (
            "MERT-v1-95M",
            "12af15fef9d0ac838c3f475bfbbf26d2060dd4f5",
            94_370_000,
            "MERT-v1 base: 12 layers x 768, post-LN, 24 kHz in, 75 Hz frames, 20k h of music",
        ),
        (
            "MERT-v1-330M",
            "5240c2708a5acaee1007f43fb9735c7dcd0b78c9",
            315_430_000,
            "MERT-v1 large: 24 layers x 1024, pre-LN, 24 kHz in, 75 Hz frames, 160k h of music",
        ),
    )  # fmt: skip
) + tuple(
    # The spectrogram + Conformer generation (docs/embeddings.md, "Which model"): 24 kHz in, 25 Hz frames,
    # CC-BY-NC-4.0. Only MERT-v2-FullSong's commit is named by public sources (third-party ports pin it); the
    # other two follow their repo's main branch until a commit can be named (docs/checkpoints.md).
    CheckpointEntry(
        name=name,
        source=source,
        revision=revision,
        licence="CC-BY-NC-4.0",
        description=description,
        aliases=(source,),
        sample_rate=24000,
        parameters=parameters,
        builtin=True,
    )
    for name, source, revision, parameters, description in (
        (
            "MERT-v2-30s",
            "m-a-p/MERT-v2-30s",
            None,
            632_295_808,
            "MERT-v2 (30 s clips): mel + ConvNeXt-V2 subsampler + 24 conformer blocks x 1024, 25 Hz frames",
        ),
        (
            "MERT-v2-FullSong",
            "m-a-p/MERT-v2-FullSong",
            "d8ba1c745e733b3908ce6ad16ebeb17ac7600a42",
            632_295_808,
            "MERT-v2 (full songs): mel + ConvNeXt-V2 subsampler + 24 conformer blocks x 1024, 25 Hz frames",
        ),
        (
            "MuQ-large-msd-iter",
            "OpenMuQ/MuQ-large-msd-iter",
            None,
            316_343_296,
            "MuQ large: mel + 2-D conv subsampler + 12 conformer blocks x 1024, 25 Hz frames",
        ),
    )  # fmt: skip
)


# Teacher weights, fetched and cached like model weights (`mert download encodec-24khz`). EnCodec's 24 kHz
# checkpoint, as torch.hub and the encodec package name it; its sha256 (whose first 8 hex digits are in the file
# name) and size (93,171,529 bytes) agree across independent public pins of this file; they could not be
# re-checked against the server from the build machine.
ENCODEC_24KHZ = "encodec-24khz"
_BUILTIN += (
    CheckpointEntry(
        name=ENCODEC_24KHZ,
        source="https://dl.fbaipublicfiles.com/encodec/v0/encodec_24khz-d7cc33bc.th",
        sha256="d7cc33bcf1aad7f2dad9836f36431530744abeace3ca033005e3290ed4fa47bf",
        licence="MIT",
        description="teacher: EnCodec 24 kHz (MERT-v1's acoustic codes; targets=encodec_cqt finds it when cached)",
        aliases=("encodec_24khz",),
        sample_rate=24000,
        builtin=True,
    ),
)


def is_url(source: str) -> bool:
    """True for an ``http://`` or ``https://`` address."""
    return urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


def normalise_sha256(digest: str, what: str) -> str:
    """Lower-case hex digest; ValueError naming ``what`` when it is not 64 hex characters."""
    if not isinstance(digest, str) or not SHA256.match(digest.lower()):
        raise ValueError(f"{what}: {digest!r} is not a SHA-256 digest (64 hex characters)")
    return digest.lower()


def registry_path() -> Path:
    """The user registry file: ``$MERT_REGISTRY``, else ``$XDG_CONFIG_HOME/mert/registry.json``."""
    if os.environ.get("MERT_REGISTRY"):
        return Path(os.environ["MERT_REGISTRY"]).expanduser()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
    return config_home / "mert" / "registry.json"


def builtin_checkpoints() -> tuple[CheckpointEntry, ...]:
    """The entries shipped with the library."""
    return _BUILTIN


def list_checkpoints(path: str | os.PathLike | None = None) -> list[CheckpointEntry]:
    """Built-in entries, then the user's (sorted by name).

    Args:
        path: user registry file (default :func:`registry_path`).

    Raises:
        ValueError: the user registry file is not valid JSON or holds an invalid entry (both named).
    """
    return [*_BUILTIN, *_read_user(Path(path) if path is not None else registry_path())]


def lookup_checkpoint(name: str, path: str | os.PathLike | None = None) -> CheckpointEntry | None:
    """The entry called ``name`` (or having it as an alias), ignoring case; None when there is none.

    A string that cannot be a name (a URL, a path with several components) is never looked up, so the
    user registry file is only read for strings that could name an entry.
    """
    key = name.casefold()
    if not key or is_url(name) or key.count("/") > 1 or key.startswith((".", "/", "~")):
        return None
    for entry in _BUILTIN:
        if key in (n.casefold() for n in entry.names()):
            return entry
    if "/" in key:  # user names never contain "/": only built-in aliases are hub ids
        return None
    for entry in _read_user(Path(path) if path is not None else registry_path()):
        if entry.name.casefold() == key:
            return entry
    return None


def register_checkpoint(
    name: str,
    source: str,
    *,
    revision: str | None = None,
    sha256: str | None = None,
    licence: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
    path: str | os.PathLike | None = None,
) -> CheckpointEntry:
    """Add a named entry to the user registry file (created if needed) and return it.

    Args:
        name: letters, digits, ``_ . + -``; no ``/`` (that would read as a hub id); compared ignoring case.
        source: an ``http(s)://`` URL (a ``#sha256=<hex>`` fragment counts as ``sha256``) or a hub repo id.
        revision: for hub ids: the branch, tag or (best) commit to use.
        sha256: expected digest of the file: required for URLs; for hub ids, the weights file's.
        licence, description: shown by ``mert download --list``.
        overwrite: replace an existing user entry of that name.
        path: user registry file (default :func:`registry_path`).

    Raises:
        ValueError: a bad name, a name taken by a built-in entry (or by a user entry without ``overwrite``),
            a URL without a digest, a source that is neither a URL nor a hub id, a malformed digest.
    """
    file = Path(path) if path is not None else registry_path()
    fields = {"source": source, "revision": revision, "sha256": sha256, "licence": licence, "description": description}
    entry = _make_entry(name, fields, where="register_checkpoint")
    clash = next((b for b in _BUILTIN if name.casefold() in (n.casefold() for n in b.names())), None)
    if clash is not None:
        raise ValueError(
            f"checkpoint name {name!r} belongs to the built-in entry {clash.name!r} ({clash.source}); "
            "choose another name"
        )
    from filelock import FileLock

    file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(file.with_name(file.name + ".lock")):
        entries = {e.name.casefold(): e for e in _read_user(file)}
        old = entries.get(name.casefold())
        if old is not None and not overwrite:
            raise ValueError(
                f"{file} already has a checkpoint named {old.name!r} ({old.source}); remove it first or pass "
                "overwrite=True (--force)"
            )
        entries[name.casefold()] = entry
        _write_user(file, entries.values())
    return entry


def unregister_checkpoint(name: str, path: str | os.PathLike | None = None) -> CheckpointEntry:
    """Remove a user entry and return it; built-in entries cannot be removed.

    Raises:
        KeyError: no user entry has that name.
        ValueError: ``name`` is a built-in entry.
    """
    file = Path(path) if path is not None else registry_path()
    if any(name.casefold() in (n.casefold() for n in b.names()) for b in _BUILTIN):
        raise ValueError(f"{name!r} is a built-in checkpoint and cannot be removed")
    from filelock import FileLock

    if not file.is_file():
        raise KeyError(f"no user checkpoint named {name!r} ({file} does not exist)")
    with FileLock(file.with_name(file.name + ".lock")):
        entries = {e.name.casefold(): e for e in _read_user(file)}
        removed = entries.pop(name.casefold(), None)
        if removed is None:
            raise KeyError(f"no user checkpoint named {name!r} in {file}")
        _write_user(file, entries.values())
    return removed


def known_names(path: str | os.PathLike | None = None) -> list[str]:
    """Every entry's name, built-in first: for error messages."""
    return [e.name for e in list_checkpoints(path)]


# --------------------------------------------------------------------------------------------- the user file
def _make_entry(name: str, fields: dict, where: str) -> CheckpointEntry:
    """Validate one user entry; every error names ``where`` (the file) and the entry."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{where}: checkpoint name {name!r} is not allowed: use letters, digits and _ . + - (no '/', which "
            "would read as a Hugging Face repo id)"
        )
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: entry {name!r} has unknown field(s) {unknown}; allowed: {list(_FIELDS)}")
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: entry {name!r}: {key} must be a string, got {value!r}")
    source = fields.get("source")
    if not source:
        raise ValueError(f"{where}: entry {name!r} has no source (a Hugging Face repo id or an http(s) URL)")
    sha256 = fields.get("sha256") or None
    if is_url(source):
        base, _, fragment = source.partition("#")
        if fragment.startswith("sha256="):
            from_url = normalise_sha256(fragment[len("sha256=") :], f"{where}: entry {name!r}")
            if sha256 is not None and normalise_sha256(sha256, f"{where}: entry {name!r}") != from_url:
                raise ValueError(f"{where}: entry {name!r}: sha256 disagrees with the URL's #sha256= fragment")
            source, sha256 = base, from_url
        if sha256 is None:
            raise ValueError(
                f"{where}: entry {name!r} is a URL ({source}) without a sha256: a URL can change under the same "
                "address, so URL entries must pin the file's digest (`sha256sum FILE`, or --sha256 HEX)"
            )
        if fields.get("revision"):
            raise ValueError(f"{where}: entry {name!r}: revision only applies to Hugging Face repo ids, not URLs")
    elif not HUB_ID.match(source):
        raise ValueError(
            f"{where}: entry {name!r} has source {source!r}, which is neither an http(s) URL nor a Hugging Face "
            "repo id (owner/name)"
        )
    return CheckpointEntry(
        name=name,
        source=source,
        revision=fields.get("revision") or None,
        sha256=normalise_sha256(sha256, f"{where}: entry {name!r}") if sha256 else None,
        licence=fields.get("licence") or "unknown",
        description=fields.get("description") or "",
    )


def _read_user(file: Path) -> list[CheckpointEntry]:
    if not file.is_file():
        return []
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the checkpoint registry {file}: {err}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError(f"checkpoint registry {file} must hold a JSON object {{name: {{source: ...}}}}")
    entries, seen = [], {}
    for name, fields in raw.items():
        fields = dict(fields)
        if "license" in fields and "licence" not in fields:  # accept either spelling when reading
            fields["licence"] = fields.pop("license")
        entry = _make_entry(name, fields, where=str(file))
        builtin = next((b for b in _BUILTIN if name.casefold() in (n.casefold() for n in b.names())), None)
        if builtin is not None:
            raise ValueError(f"{file}: entry {name!r} clashes with the built-in checkpoint {builtin.name!r}")
        if name.casefold() in seen:
            raise ValueError(f"{file}: entries {seen[name.casefold()]!r} and {name!r} differ only in case")
        seen[name.casefold()] = name
        entries.append(entry)
    return sorted(entries, key=lambda e: e.name.casefold())


def _write_user(file: Path, entries: Iterable[CheckpointEntry]) -> None:
    """Write the file atomically, so a reader never sees half of it."""
    data = {e.name: e.to_json() for e in sorted(entries, key=lambda e: e.name.casefold())}
    from mert.fileio import write_json_atomic

    write_json_atomic(file, data)
