"""Issue 11, case 5: an image file that does not decode completely and exactly never enters a
split or a cache, whatever PIL settings the user has made; a cache never serves the pixels of
a source file that has changed since it was written."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from synthetic import write_folder

from skipenv.data.sources import DataError
from skipenv.data.splits import load_cifar10


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_folder(tmp_path / "data" / "train", per_class=2)
    return tmp_path / "data"


def _encoded(fmt: str, seed: int = 5) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def _flip(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    return bytes(damaged)


DAMAGE = {
    "png-truncated": ("0001.png", lambda: _encoded("PNG")[: len(_encoded("PNG")) * 2 // 3]),
    "png-bit-flip": ("0001.png", lambda: _flip(_encoded("PNG"))),
    "png-bytes-appended": ("0001.png", lambda: _encoded("PNG") + b"more"),
    "jpeg-truncated": ("0001.jpg", lambda: _encoded("JPEG")[: len(_encoded("JPEG")) * 2 // 3]),
    "jpeg-bytes-appended": ("0001.jpg", lambda: _encoded("JPEG") + b"more"),
    "gif-named-png": ("0001.png", lambda: _encoded("GIF")),
}


@pytest.mark.parametrize("load_truncated", [False, True], ids=["pil-default", "pil-lenient"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_image_is_refused_under_any_pil_setting(
    root, tmp_path, monkeypatch, damage, load_truncated
):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    name, make = DAMAGE[damage]
    bad = root / "train" / "cat" / name
    for old in bad.parent.glob("0001.*"):
        old.unlink()
    bad.write_bytes(make())
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"Corrupt or unreadable image .*cat.{name}"):
        load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert not cache.exists() or not list(cache.iterdir())  # nothing cached
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # the user's setting restored


def test_a_whole_jpeg_is_accepted(root, tmp_path):
    target = root / "train" / "cat" / "0001.png"
    target.unlink()
    target.with_suffix(".jpg").write_bytes(_encoded("JPEG"))
    split = load_cifar10("train-full", root, cache_dir=tmp_path / "cache", progress=False)
    assert len(split) == 20


def _replace_keeping_size_and_times(path: Path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime set back


def _same_size_pngs(size: int, count: int) -> list[bytes]:
    found = [d for d in (_encoded("PNG", seed) for seed in range(300)) if len(d) == size]
    assert len(found) >= count, "not enough same-size PNGs"
    return found[:count]


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)


def test_cache_never_serves_pixels_of_a_changed_file(root, tmp_path):
    cache = tmp_path / "cache"
    path = root / "train" / "cat" / "0001.png"
    a, b = _same_size_pngs(path.stat().st_size, 2)
    first = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    index = first.labels.tolist().index(3) + 1  # cat is class 3; 0001 is its second image
    # rewritten in place, same size, mtime set back: count, bytes, names and mtimes unchanged
    _replace_keeping_size_and_times(path, a)
    again = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.images[index].numpy(), _pixels(a))
    # replaced by another file (renamed over it) of the same size and mtime
    st = path.stat()
    other = path.with_name("incoming.tmp")
    other.write_bytes(b)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    third = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(third.images[index].numpy(), _pixels(b))


def test_batches_cache_follows_a_changed_batch_file(tmp_path):
    import pickle

    batch_dir = tmp_path / "data" / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write(name: str, fill: int | None = None) -> None:
        # values below 128: one byte each in the pickle, so every such file has one size
        flat = rng.integers(0, 128, (10, 3072), dtype=np.uint8)
        if fill is not None:
            flat[:] = fill
        with open(batch_dir / name, "wb") as f:
            pickle.dump({b"labels": list(range(10)), b"data": flat}, f, protocol=2)

    for i in range(1, 6):
        write(f"data_batch_{i}")
    cache = tmp_path / "cache"
    load_cifar10("train-full", tmp_path / "data", cache_dir=cache, progress=False)
    target = batch_dir / "data_batch_1"
    st = target.stat()
    write("data_batch_1", fill=7)  # same size: a pickle of the same shapes
    assert target.stat().st_size == st.st_size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_cifar10("train-full", tmp_path / "data", cache_dir=cache, progress=False)
    assert int(again.images[:10].min()) == 7 == int(again.images[:10].max())
