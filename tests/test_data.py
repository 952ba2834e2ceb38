"""Tests of skipenv.data: sources, cache, splits (CIFAR-10 loading) and the loader.

Synthetic data only: small image-folder trees and official-style batch pickles written into
tmp_path. Nothing is downloaded and the user's data root and cache are never touched.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import write_folder, write_image

import skipenv.data.__main__ as data_cli
import skipenv.data.cache as data_cache
import skipenv.data.sources as data_sources
import skipenv.data.splits as data_splits
from skipenv.data.cache import DataCacheWarning
from skipenv.data.loader import BatchLoader, augment, normalize
from skipenv.data.sources import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataError,
    resolve_data_root,
)
from skipenv.data.splits import (
    VAL_SEED,
    CifarSplit,
    load_cifar10,
    split_indices,
    val_indices,
)

TEST_PER_CLASS = 3
REAL_DEFAULT_CACHE_DIR = data_cache.default_cache_dir  # before the autouse fixture patches it


# ------------------------------------------------------------------------- helpers


def write_batches(root: Path, per_batch: int = 30, test_n: int = 20, seed: int = 0) -> dict:
    """Write official-style ``cifar-10-batches-py`` pickles; return the expected tensors."""
    rng = np.random.default_rng(seed)
    batch_dir = root / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    out = {}
    for split, names, n in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)], per_batch),
        ("test", ["test_batch"], test_n),
    ):
        all_images, all_labels = [], []
        for name in names:
            flat = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # N x 3072
            labels = [int(v) for v in rng.permutation(np.arange(n) % 10)]
            with open(batch_dir / name, "wb") as f:
                pickle.dump(
                    {
                        b"batch_label": name.encode(),
                        b"labels": labels,
                        b"data": flat,
                        b"filenames": [b"x.png"] * n,
                    },
                    f,
                    protocol=2,
                )
            all_images.append(flat.reshape(n, 3, 32, 32))
            all_labels.extend(labels)
        out[split] = (np.concatenate(all_images), np.array(all_labels, dtype=np.int64))
    return out


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may download, read $SKIPNET_DATA, or write to the user's cache."""

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests must never download")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    monkeypatch.delenv("SKIPNET_DATA", raising=False)
    monkeypatch.setattr(data_splits, "default_cache_dir", lambda: tmp_path / "default-cache")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def folder_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path / "data"
    images, labels = write_folder(root / "train")
    return root, images, labels


# --------------------------------------------------------------------- data roots


def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import platformdirs

    assert resolve_data_root(tmp_path / "x") == tmp_path / "x"
    assert resolve_data_root(None) == Path(platformdirs.user_cache_dir("skipnet-gym")) / "data"
    monkeypatch.setenv("SKIPNET_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"  # argument wins
    assert resolve_data_root("~/d") == Path.home() / "d"


def test_cache_dir_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import platformdirs

    monkeypatch.delenv("SKIPNET_CACHE", raising=False)
    expected = Path(platformdirs.user_cache_dir("skipnet-gym")) / "tensors"
    assert REAL_DEFAULT_CACHE_DIR() == expected
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "c"))
    assert REAL_DEFAULT_CACHE_DIR() == tmp_path / "c"


def test_env_var_root_is_used(monkeypatch, folder_root, cache) -> None:
    root, images, _ = folder_root
    monkeypatch.setenv("SKIPNET_DATA", str(root))
    full = load_cifar10("train-full", cache_dir=cache, progress=False)
    assert full.path == root / "train"
    assert torch.equal(full.images, torch.from_numpy(images))


# ------------------------------------------------------------------------- splits


def test_split_sizes_and_partition(folder_root, cache) -> None:
    root, _, _ = folder_root
    write_folder(root / "test", per_class=TEST_PER_CLASS, seed=1)
    kw = {"root": root, "cache_dir": cache, "progress": False}
    full, train, val = (load_cifar10(s, **kw) for s in ("train-full", "train", "val"))
    test = load_cifar10("test", **kw)
    assert (len(full), len(train), len(val), len(test)) == (200, 180, 20, 30)
    assert val.class_counts() == [2] * 10  # 10% of each class
    assert train.class_counts() == [18] * 10
    names = (full.split, train.split, val.split, test.split)
    assert names == ("train-full", "train", "val", "test")
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(200))
    assert torch.equal(val.images, full.images[val.indices])
    assert torch.equal(train.labels, full.labels[train.indices])
    assert train.classes == CIFAR10_CLASSES
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert tuple(train.images.shape) == (180, 3, 32, 32)


def test_val_indices_real_sizes_and_golden_values() -> None:
    labels = torch.arange(10).repeat_interleave(5000)  # the real data's class layout
    val = val_indices(labels)
    assert len(val) == 5000
    assert torch.bincount(labels[val], minlength=10).tolist() == [500] * 10
    # Pinned: changing VAL_SEED or the hashing silently changes the validation set.
    assert val[:8].tolist() == [8, 10, 25, 28, 42, 53, 55, 58]
    assert int(val.sum()) == 124840279
    train, val2 = split_indices(labels)
    assert torch.equal(val, val2) and len(train) == 45000
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(50000))


def test_val_indices_ignore_global_seeds() -> None:
    labels = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002 - the legacy global seed is the point
    a = val_indices(labels)
    torch.manual_seed(2)
    np.random.seed(2)  # noqa: NPY002
    torch.rand(10)
    assert torch.equal(a, val_indices(labels))
    assert not torch.equal(a, val_indices(labels, seed=VAL_SEED + 1))


def test_val_indices_same_in_another_process() -> None:
    code = (
        "import torch; from skipenv.data.splits import val_indices; torch.manual_seed(123);"
        "print(val_indices(torch.arange(100) % 10).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == str(val_indices(torch.arange(100) % 10).tolist())
    assert out == "[8, 10, 24, 26, 42, 49, 53, 85, 87, 91]"


def test_unknown_split_and_source(folder_root, cache) -> None:
    root, _, _ = folder_root
    with pytest.raises(ValueError, match=r"'validation'.*train, val, train-full, test"):
        load_cifar10("validation", root, cache_dir=cache)
    with pytest.raises(ValueError, match="auto, batches, folder"):
        load_cifar10("train", root, source="lmdb", cache_dir=cache)


# ------------------------------------------------------------------ image folders


def test_png_pixels_round_trip_in_sorted_order(folder_root, cache) -> None:
    root, images, labels = folder_root
    full = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert torch.equal(full.images, torch.from_numpy(images))
    assert torch.equal(full.labels, torch.from_numpy(labels))
    assert full.source == "folder"


def test_archive_nested_layout(tmp_path, cache) -> None:
    root = tmp_path / "data"
    images, _ = write_folder(root / "cifar10-jpeg" / "train")
    full = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert full.path == root / "cifar10-jpeg" / "train"
    assert torch.equal(full.images, torch.from_numpy(images))


def test_jpeg_and_other_extensions(tmp_path, cache) -> None:
    root = tmp_path / "data"
    write_folder(root / "train", per_class=2, ext=".jpg")
    write_image(root / "train" / "cat" / "zz.JPEG", np.full((32, 32, 3), 9, np.uint8))
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    (root / "train" / ".DS_Store").write_text("ignored")
    full = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert len(full) == 21 and full.class_counts()[3] == 3
    # JPEG is lossy: compare with what PIL itself decodes from the files
    first = np.array(Image.open(root / "train" / "airplane" / "0000.jpg").convert("RGB"))
    assert torch.equal(full.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert full.images[3 * 2 + 2].float().mean().item() == pytest.approx(9, abs=1)


def test_grayscale_rgba_and_palette_become_rgb(folder_root, cache) -> None:
    root, images, _ = folder_root
    gray = np.arange(1024, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    rgba = np.dstack([images[0].transpose(1, 2, 0), np.full((32, 32), 7, np.uint8)])
    palette = Image.fromarray(images[1].transpose(1, 2, 0)).convert("P")
    write_image(root / "train" / "airplane" / "0000.png", gray)
    write_image(root / "train" / "airplane" / "0001.png", rgba)
    palette.save(root / "train" / "airplane" / "0002.png")
    full = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert torch.equal(full.images[0], torch.from_numpy(gray).expand(3, 32, 32))
    assert torch.equal(full.images[1], torch.from_numpy(images[0]))
    expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(full.images[2], torch.from_numpy(expected.copy()))


# ---------------------------------------------------------------- official batches


def test_batches_round_trip(tmp_path, cache) -> None:
    root = tmp_path / "data"
    expected = write_batches(root)
    kw = {"root": root, "cache_dir": cache, "progress": False}
    full = load_cifar10("train-full", **kw)
    assert full.source == "batches" and len(full) == 150
    assert torch.equal(full.images, torch.from_numpy(expected["train"][0]))
    assert torch.equal(full.labels, torch.from_numpy(expected["train"][1]))
    test = load_cifar10("test", **kw)
    assert torch.equal(test.images, torch.from_numpy(expected["test"][0]))
    val = load_cifar10("val", **kw)
    assert val.class_counts() == [2] * 10  # 15 per class -> 10% rounded half up
    assert len(load_cifar10("train", **kw)) == 150 - 20


def test_auto_prefers_batches_and_source_can_be_forced(tmp_path, cache) -> None:
    root = tmp_path / "data"
    write_batches(root)
    folder_images, _ = write_folder(root / "train")
    kw = {"root": root, "cache_dir": cache, "progress": False}
    assert load_cifar10("train-full", **kw).source == "batches"
    forced = load_cifar10("train-full", source="folder", **kw)
    assert forced.source == "folder" and torch.equal(forced.images, torch.from_numpy(folder_images))
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(
            "train-full", root=tmp_path / "data" / "train", source="batches", cache_dir=cache
        )


def test_download_calls_torchvision_only_when_asked(tmp_path, cache, monkeypatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_batches(Path(root))

    root = tmp_path / "new"
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    with pytest.raises(DataError):
        load_cifar10("train", root, cache_dir=cache)  # download=False: no call
    assert calls == []
    full = load_cifar10("train-full", root, download=True, cache_dir=cache, progress=False)
    assert len(full) == 150 and calls == [(str(root), True, True)]

    def failing(root: str, train: bool, download: bool) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing)
    with pytest.raises(DataError, match=r"Downloading.*network unreachable"):
        load_cifar10("train", tmp_path / "other", download=True, cache_dir=cache)


# ------------------------------------------------------------------------- cache


def _only_cache_file(cache: Path) -> Path:
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt", files  # no leftover temporaries
    return files[0]


def test_cache_hit_does_not_decode(folder_root, cache, monkeypatch) -> None:
    root, images, _ = folder_root
    first = load_cifar10("train", root, cache_dir=cache, progress=False)
    path = _only_cache_file(cache)
    assert path.name.startswith("cifar10-folder-train-")

    def no_decode(path: str) -> np.ndarray:
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(data_sources, "_decode_image_file", no_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_cifar10("train", root, cache_dir=cache, progress=False)
        full = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert torch.equal(first.images, again.images)
    assert torch.equal(full.images, torch.from_numpy(images))
    _only_cache_file(cache)  # train, val and train-full share one file


def test_cache_hit_for_batches(tmp_path, cache, monkeypatch) -> None:
    root = tmp_path / "data"
    write_batches(root)
    first = load_cifar10("train-full", root, cache_dir=cache)
    monkeypatch.setattr(data_sources, "_read_batch_file", lambda p: 1 / 0)
    assert torch.equal(first.images, load_cifar10("train-full", root, cache_dir=cache).images)


def test_different_roots_do_not_collide(tmp_path, cache) -> None:
    a_images, _ = write_folder(tmp_path / "a" / "train", per_class=2, seed=1)
    b_images, _ = write_folder(tmp_path / "b" / "train", per_class=2, seed=2)
    a = load_cifar10("train-full", tmp_path / "a", cache_dir=cache, progress=False)
    b = load_cifar10("train-full", tmp_path / "b", cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.pt"))) == 2
    assert torch.equal(a.images, torch.from_numpy(a_images))
    assert torch.equal(b.images, torch.from_numpy(b_images))


@pytest.mark.parametrize("damage", ["truncate", "flip-bytes", "garbage", "tamper"])
def test_corrupt_cache_is_rebuilt_with_warning(folder_root, cache, damage) -> None:
    root, images, _ = folder_root
    load_cifar10("train-full", root, cache_dir=cache, progress=False)
    path = _only_cache_file(cache)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip-bytes":
        mid = len(raw) // 2
        raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
        path.write_bytes(raw)
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:  # a well-formed file whose pixels no longer match the stored checksum
        payload = torch.load(path, weights_only=True)
        payload["images"][0, 0, 0, 0] ^= 1
        torch.save(payload, path)
    reason = "checksum mismatch" if damage == "tamper" else "rebuilding"
    with pytest.warns(DataCacheWarning, match=rf"Ignoring CIFAR-10 cache .*{reason}"):
        full = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert torch.equal(full.images, torch.from_numpy(images))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10("train-full", root, cache_dir=cache, progress=False)  # repaired
    _only_cache_file(cache)


def test_cache_rebuilt_when_source_changes(folder_root, cache) -> None:
    root, _, _ = folder_root
    assert len(load_cifar10("train-full", root, cache_dir=cache, progress=False)) == 200
    write_image(root / "train" / "cat" / "9999.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.warns(DataCacheWarning, match="source files changed"):
        full = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    assert len(full) == 201 and full.class_counts()[3] == 21


def test_cache_version_mismatch_and_rebuild_flag(folder_root, cache, monkeypatch) -> None:
    root, _, _ = folder_root
    load_cifar10("train-full", root, cache_dir=cache, progress=False)
    monkeypatch.setattr(data_cache, "CACHE_FORMAT_VERSION", 999)
    with pytest.warns(DataCacheWarning, match="format version 1, expected 999"):
        load_cifar10("train-full", root, cache_dir=cache, progress=False)

    calls = []
    real = data_sources._decode_image_file
    monkeypatch.setattr(data_sources, "_decode_image_file", lambda p: calls.append(p) or real(p))
    load_cifar10("train-full", root, cache_dir=cache, progress=False, rebuild=True)
    assert len(calls) == 200


def test_unwritable_cache_only_warns(folder_root, tmp_path) -> None:
    root, images, _ = folder_root
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.warns(DataCacheWarning, match="Could not write"):
        full = load_cifar10("train-full", root, cache_dir=not_a_dir, progress=False)
    assert torch.equal(full.images, torch.from_numpy(images))


# ---------------------------------------------------------------------- bad input


def test_missing_root(tmp_path, cache) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))} does not exist(.|\n)*tar xzf"):
        load_cifar10("train", missing, cache_dir=cache)


def test_root_without_data_lists_paths_and_remedies(tmp_path, cache) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError) as info:
        load_cifar10("train", root, cache_dir=cache)
    msg = str(info.value)
    for needle in (
        str(root / "cifar-10-batches-py"),
        str(root / "train"),
        str(root / "cifar10-jpeg" / "train"),
        "download=True",
        f"mkdir -p {root} && tar xzf cifar10-jpeg-train.tar.gz -C {root}",
    ):
        assert needle in msg


def test_test_split_is_held_out(folder_root, cache) -> None:
    root, _, _ = folder_root
    with pytest.raises(DataError, match=r"held out(.|\n)*download=True"):
        load_cifar10("test", root, cache_dir=cache)


def test_class_folders_must_match(folder_root, cache) -> None:
    root, _, _ = folder_root
    (root / "train" / "truck").rename(root / "train" / "lorry")
    with pytest.raises(DataError, match="missing: truck; unexpected: lorry"):
        load_cifar10("train", root, cache_dir=cache)


def test_empty_class_folder(folder_root, cache) -> None:
    root, _, _ = folder_root
    for f in (root / "train" / "bird").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"bird contains no images"):
        load_cifar10("train", root, cache_dir=cache)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_image_names_the_file(folder_root, cache, kind) -> None:
    root, _, _ = folder_root
    bad = root / "train" / "dog" / "0007.png"
    content = bad.read_bytes()
    bad.write_bytes({"garbage": b"\x89PNG nonsense", "truncated": content[:60], "empty": b""}[kind])
    with pytest.raises(DataError, match=r"Corrupt or unreadable image .*dog/0007\.png") as info:
        load_cifar10("train", root, cache_dir=cache, progress=False)
    assert info.value.__cause__ is not None  # the underlying error is kept


def test_wrong_image_size_names_file_and_size(folder_root, cache) -> None:
    root, _, _ = folder_root
    write_image(root / "train" / "frog" / "0003.png", np.zeros((32, 31, 3), np.uint8))
    with pytest.raises(DataError, match=r"frog/0003\.png is 31x32"):
        load_cifar10("train", root, cache_dir=cache, progress=False)


def test_corrupt_batch_files(tmp_path, cache) -> None:
    root = tmp_path / "data"
    write_batches(root)
    batch_dir = root / "cifar-10-batches-py"
    (batch_dir / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=r"Corrupt CIFAR-10 batch file .*data_batch_3"):
        load_cifar10("train", root, cache_dir=cache)

    with open(batch_dir / "data_batch_3", "wb") as f:
        pickle.dump({b"labels": [1, 2]}, f, protocol=2)
    with pytest.raises(DataError, match="data_batch_3: no 'data'/'labels'"):
        load_cifar10("train", root, cache_dir=cache)

    with open(batch_dir / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3: 'data' is \(2, 100\)"):
        load_cifar10("train", root, cache_dir=cache)

    (batch_dir / "data_batch_5").unlink()
    with pytest.raises(DataError, match="incomplete: missing data_batch_5"):
        load_cifar10("train", root, cache_dir=cache)


class _Exploit:
    target = ""

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_batch_unpickler_refuses_code(tmp_path, cache) -> None:
    root = tmp_path / "data"
    write_batches(root)
    exploit = _Exploit()
    exploit.target = str(tmp_path / "pwned")
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": exploit, b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"unexpected object .*makedirs"):
        load_cifar10("train", root, cache_dir=cache)
    assert not (tmp_path / "pwned").exists()


def test_cli(folder_root, cache, capsys) -> None:
    root, _, _ = folder_root
    assert (
        data_cli.main(
            ["--root", str(root), "--split", "val", "--cache-dir", str(cache), "--no-progress"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "val: 20 images" in out and "airplane 2" in out
    assert data_cli.main(["--root", str(root / "nope"), "--cache-dir", str(cache)]) == 1
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------- augment


def _coordinate_image() -> torch.Tensor:
    """3 x 32 x 32 uint8 image whose pixels encode their position (never zero)."""
    rows = torch.arange(1, 33, dtype=torch.uint8)
    return torch.stack(
        [
            rows[:, None].expand(32, 32),
            rows[None, :].expand(32, 32),
            torch.full((32, 32), 200, dtype=torch.uint8),
        ]
    )


def test_augment_outputs_are_shifted_flipped_windows_of_the_padded_image() -> None:
    image = _coordinate_image()
    batch = image.expand(128, 3, 32, 32).contiguous()
    out = augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))  # 3 x 40 x 40, zero border
    candidates, params = [], []
    for top in range(9):
        for left in range(9):
            window = padded[:, top : top + 32, left : left + 32]
            candidates += [window, window.flip(-1)]
            params += [(top, left, False), (top, left, True)]
    candidates = torch.stack(candidates)  # 162 x 3 x 32 x 32
    matches = (out[:, None] == candidates[None]).flatten(2).all(-1)  # 128 x 162
    assert matches.sum(1).tolist() == [1] * 128  # each output is exactly one window
    chosen = [params[i] for i in matches.float().argmax(1).tolist()]
    assert {p[0] for p in chosen} == set(range(9)) and {p[1] for p in chosen} == set(range(9))
    assert 0 < sum(p[2] for p in chosen) < 128
    assert (out == 0).any()  # zero padding does appear


def test_augment_flip_rate_determinism_and_identity() -> None:
    images = torch.randint(
        0, 256, (4000, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    out = augment(images, torch.Generator().manual_seed(2), padding=0)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    same = (out == images).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 0.45 < flipped.float().mean().item() < 0.55
    a = augment(images, torch.Generator().manual_seed(5))
    b = augment(images, torch.Generator().manual_seed(5))
    c = augment(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment(images, None, padding=0, flip=False), images)
    with pytest.raises(ValueError, match="B x C x H x W"):
        augment(images[0])


def test_normalize_values_and_memory_format() -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    x = normalize(images)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and x.shape == images.shape
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std)
    edges = normalize(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1))
    torch.testing.assert_close(edges[0].flatten(), (-mean / std).flatten())
    torch.testing.assert_close(edges[1].flatten(), ((1 - mean) / std).flatten())
    cl = normalize(images, memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, x)
    torch.testing.assert_close(normalize(images, (0.5,) * 3, (0.5,) * 3), images / 127.5 - 1)
    with pytest.raises(ValueError, match="3 values"):
        normalize(images, (0.5, 0.5), (0.5, 0.5))


# ------------------------------------------------------------------ BatchLoader


def _toy(n: int = 103) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.arange(n)  # label = sample id


def _epoch(loader: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_loader_covers_every_sample_once() -> None:
    images, ids = _toy()
    loader = BatchLoader(images, ids, batch_size=10, shuffle=True, augment=True, seed=0)
    assert len(loader) == 11
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3, 32, 32) and x.device.type == "cpu"
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(103))
    dropped = BatchLoader(images, ids, batch_size=10, shuffle=True, drop_last=True)
    assert len(dropped) == 10
    ys = _epoch(dropped)[1]
    assert len(ys) == 100 and len(set(ys.tolist())) == 100


def test_loader_is_reproducible_per_seed_and_epoch() -> None:
    images, ids = _toy()

    def make(seed: int) -> BatchLoader:
        return BatchLoader(images, ids, batch_size=16, shuffle=True, augment=True, seed=seed)

    a, b, c = make(0), make(0), make(1)
    a0, a1 = _epoch(a), _epoch(a)
    b0, b1 = _epoch(b), _epoch(b)
    assert torch.equal(a0[0], b0[0]) and torch.equal(a0[1], b0[1])
    assert torch.equal(a1[0], b1[0]) and torch.equal(a1[1], b1[1])
    assert not torch.equal(a0[1], a1[1])  # a new order each epoch
    assert not torch.equal(a0[1], _epoch(c)[1])  # another seed, another order
    resumed = make(0)
    resumed.set_epoch(1)
    assert resumed.epoch == 1
    r1 = _epoch(resumed)
    assert torch.equal(r1[0], a1[0]) and torch.equal(r1[1], a1[1])
    assert resumed.epoch == 2


def test_loader_without_shuffle_or_augment_is_plain_normalization() -> None:
    images, ids = _toy(40)
    loader = BatchLoader(images, ids, batch_size=16, channels_last=True)
    x, y = _epoch(loader)
    assert torch.equal(y, ids)
    torch.testing.assert_close(x, normalize(images))
    assert next(iter(loader))[0].is_contiguous(memory_format=torch.channels_last)


def test_loader_accepts_cifar_split(folder_root, cache) -> None:
    root, _, _ = folder_root
    val = load_cifar10("val", root, cache_dir=cache, progress=False)
    loader = BatchLoader(val, batch_size=8, shuffle=True, augment=True, seed=None)
    x, y = _epoch(loader)
    assert x.shape == (20, 3, 32, 32) and sorted(y.tolist()) == sorted(val.labels.tolist())


def test_loader_argument_validation() -> None:
    images, ids = _toy(10)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            BatchLoader(images, ids, batch_size=bad)
    with pytest.raises(ValueError, match="10 images but 9 labels"):
        BatchLoader(images, ids[:9])
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(images.float(), ids)
    with pytest.raises(ValueError, match="labels are required"):
        BatchLoader(images)
    with pytest.raises(ValueError, match="no batches"):
        BatchLoader(images, ids, batch_size=11, drop_last=True)
    with pytest.raises(ValueError, match="empty"):
        BatchLoader(images[:0], ids[:0])
    with pytest.raises(ValueError, match="epoch"):
        BatchLoader(images, ids).set_epoch(-1)
    split = CifarSplit(images, ids)
    with pytest.raises(ValueError, match="must not be given"):
        BatchLoader(split, ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda() -> None:
    images, ids = _toy()
    loader = BatchLoader(images, ids, batch_size=32, shuffle=True, augment=True, device="cuda")
    x, y = _epoch(loader)
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    assert sorted(y.tolist()) == list(range(103))
    again = BatchLoader(images, ids, batch_size=32, shuffle=True, augment=True, device="cuda")
    assert torch.equal(_epoch(again)[0], x)
    out = augment(images.cuda(), torch.Generator().manual_seed(0))  # CPU generator is fine
    assert out.is_cuda


def test_the_package_exports_the_submodules_public_api() -> None:
    import skipenv.data as package

    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert package.load_cifar10 is data_splits.load_cifar10
    assert package.BatchLoader is BatchLoader and package.DataError is DataError
