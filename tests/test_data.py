import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CLASSES,
    fake_images,
    full_disk_writing,
    invoke,
    tar_folder,
    tiny_config,
    write_folder_layout,
    write_pickle_layout,
)

from bnorder.data.catalog import CIFAR10_STATS, DataError, Split
from bnorder.data.loaders import DeviceLoader, balanced_subset, load_data, random_crop_flip
from bnorder.data.sources import read_cifar10
from bnorder.runs.config import DataConfig


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def assert_is_fake_set(data, exact: bool = True) -> None:
    """The loaded set holds the generated images, labels and classes (exactly, when lossless)."""
    train_x, train_y = fake_images(10, seed=1)
    test_x, test_y = fake_images(5, seed=2)
    assert data.classes == CLASSES
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (100, 3, 32, 32)
    assert data.test.images.shape == (50, 3, 32, 32)
    assert data.test.labels.tolist() == test_y
    assert sorted(data.train.labels.tolist()) == sorted(train_y)
    if exact:
        assert torch.equal(data.test.images, nchw(test_x))
        # pickled training batches are shuffled: compare as sets of (label, image) pairs
        got = {
            (int(y), x.numpy().tobytes())
            for x, y in zip(data.train.images, data.train.labels, strict=True)
        }
        want = {(y, x.numpy().tobytes()) for x, y in zip(nchw(train_x), train_y, strict=True)}
        assert got == want


def test_torchvision_pickle_layout(pickle_root: Path) -> None:
    assert_is_fake_set(read_cifar10(pickle_root))
    assert_is_fake_set(read_cifar10(pickle_root / "cifar-10-batches-py"))  # the folder itself


def test_class_folder_tree(folder_root: Path) -> None:
    assert_is_fake_set(read_cifar10(folder_root))


def test_jpeg_class_folder_tree(tmp_path: Path) -> None:
    data = read_cifar10(write_folder_layout(tmp_path / "jpeg", suffix=".jpg"))
    assert_is_fake_set(data, exact=False)  # JPEG is lossy
    diff = (data.test.images.float() - nchw(fake_images(5, seed=2)[0]).float()).abs().mean()
    assert diff < 20


@pytest.mark.parametrize("layout", ["pickle", "folders"])
def test_tarball_is_decoded_once_into_the_cache(
    tmp_path: Path, cache_dir: Path, layout: str
) -> None:
    if layout == "pickle":
        source = write_pickle_layout(tmp_path / "src") / "cifar-10-batches-py"
    else:
        source = write_folder_layout(tmp_path / "src")
    tarball = tar_folder(source, tmp_path / "cifar.tar.gz", arcname="some-top-folder")
    assert_is_fake_set(read_cifar10(tarball))
    caches = list(cache_dir.glob("*.npz"))
    assert len(caches) == 1
    before = caches[0].stat().st_mtime_ns
    assert_is_fake_set(read_cifar10(tarball))  # from the cache, not rewritten
    assert caches[0].stat().st_mtime_ns == before


def test_damaged_cache_is_rebuilt(tmp_path: Path, cache_dir: Path, folder_root: Path) -> None:
    tarball = tar_folder(folder_root, tmp_path / "c.tar.gz", arcname=".")
    read_cifar10(tarball)
    (cache,) = cache_dir.glob("*.npz")
    cache.write_bytes(b"garbage")
    assert_is_fake_set(read_cifar10(tarball))


def test_missing_data_names_the_place_and_the_ways_out(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "data.download: true" in message and "data.root" in message


def test_failed_download_says_how_to_use_a_local_copy(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as info:
        read_cifar10(tmp_path / "empty", download=True)
    message = str(info.value)
    assert "downloading CIFAR-10 into" in message and "Name or service not known" in message
    assert "Point data.root at a local copy (in the config, or --set data.root=PATH)" in message
    assert not (tmp_path / "empty").exists()  # no lock file left in the user's tree


def test_foreign_tarball_and_broken_files(tmp_path: Path, pickle_root: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no cifar-10-batches-py/ or train/ and test/"):
        read_cifar10(tar_folder(junk, tmp_path / "junk.tar.gz", arcname="x"), cache_dir=tmp_path)
    not_a_tar = tmp_path / "fake.tar.gz"
    not_a_tar.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot read tarball"):
        read_cifar10(not_a_tar, cache_dir=tmp_path)
    (pickle_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing CIFAR-10 files \['data_batch_3'\]"):
        read_cifar10(pickle_root)


def test_wrong_image_size_is_reported(folder_root: Path) -> None:
    from PIL import Image

    bad = folder_root / "test" / "cat" / "0000.png"
    Image.new("RGB", (28, 28)).save(bad)
    with pytest.raises(DataError, match=r"0000.png: expected a 32×32 image, got 28×28"):
        read_cifar10(folder_root)


def test_subsets_are_class_balanced_and_deterministic(folder_root: Path) -> None:
    a = load_data(DataConfig(root=str(folder_root), train_subset=25, test_subset=20))
    b = load_data(DataConfig(root=str(folder_root), train_subset=25, test_subset=20))
    counts = torch.bincount(a.train.labels, minlength=10).tolist()
    assert counts == [3] * 5 + [2] * 5
    assert torch.bincount(a.test.labels).tolist() == [2] * 10
    assert torch.equal(a.train.images, b.train.images)
    with pytest.raises(DataError, match="data.train_subset: asked for 1000 images"):
        load_data(DataConfig(root=str(folder_root), train_subset=1000))


def test_balanced_subset_with_too_few_of_a_class() -> None:
    split = Split(torch.zeros(12, 3, 32, 32, dtype=torch.uint8), torch.tensor([0] * 10 + [1] * 2))
    with pytest.raises(DataError, match="need 3 of class 1"):
        balanced_subset(split, 6, 2, what="data.test_subset")


def test_random_crop_flip_matches_per_image_reference() -> None:
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [8, 8], [4, 4], [1, 7], [3, 0], [8, 2]])
    flips = torch.tensor([False, True, False, True, True, False])
    out = random_crop_flip(images, shifts, flips)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(6):
        dy, dx = shifts[i].tolist()
        want = padded[i, :, dy : dy + 32, dx : dx + 32]
        if flips[i]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)
    assert torch.equal(out[2], images[2])  # shift (4, 4), no flip: the original image


def test_device_loader_order_depends_on_seed_and_epoch_only() -> None:
    split = Split(
        torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8), torch.arange(100) % 10
    )
    make = lambda seed: DeviceLoader(
        split,
        batch_size=32,
        device=torch.device("cpu"),
        train=True,
        augment=True,
        seed=seed,
        stats=CIFAR10_STATS,
    )
    assert len(make(0)) == 3  # the ragged last batch of 4 is dropped in training
    first = [b for b in make(0).epoch(1)]
    again = [b for b in make(0).epoch(1)]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(first, again, strict=True))
    other_epoch = next(iter(make(0).epoch(2)))[1]
    other_seed = next(iter(make(1).epoch(1)))[1]
    assert not torch.equal(first[0][1], other_epoch)
    assert not torch.equal(first[0][1], other_seed)


def test_eval_loader_keeps_order_and_every_image() -> None:
    split = Split(torch.full((10, 3, 32, 32), 255, dtype=torch.uint8), torch.arange(10))
    loader = DeviceLoader(
        split, batch_size=4, device=torch.device("cpu"), train=False, stats=CIFAR10_STATS
    )
    batches = list(loader.epoch())
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    x = batches[0][0]
    assert torch.allclose(x[0, 0], torch.full((32, 32), (1 - 0.4914) / 0.2470))  # normalised


def test_folder_tree_is_decoded_once_and_again_when_it_changes(
    folder_root: Path, cache_dir: Path
) -> None:
    assert_is_fake_set(read_cifar10(folder_root))
    (cache,) = cache_dir.glob("*.npz")
    before = cache.stat().st_mtime_ns
    assert_is_fake_set(read_cifar10(folder_root))  # from the cache
    assert cache.stat().st_mtime_ns == before
    first = sorted((folder_root / "test" / CLASSES[0]).iterdir())[0]
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(first)  # one image changed
    changed = read_cifar10(folder_root)
    assert len(list(cache_dir.glob("*.npz"))) == 2
    assert (
        changed.test.images[0].tolist()
        == torch.tensor([1, 2, 3]).view(3, 1, 1).expand(3, 32, 32).tolist()
    )


# ---------------------------------------------------------------- hostile input (issue 17)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_batches_of_every_pickle_protocol_load(tmp_path: Path, protocol: int) -> None:
    from bnorder.data.formats import _unpickle

    batch = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2], "b": b"x"}
    loaded = _unpickle(pickle.dumps(batch, protocol=protocol), "batch")
    assert loaded["labels"] == [1, 2] and loaded["data"].tolist() == [[0, 1, 2], [3, 4, 5]]


class _Payload:
    """A pickle that, loaded with plain pickle.loads, creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_crafted_batch_runs_no_code(tmp_path: Path, pickle_root: Path) -> None:
    proof = tmp_path / "payload-ran"
    folder = pickle_root / "cifar-10-batches-py"
    batch = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _Payload(proof)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    config = tiny_config(tmp_path, pickle_root)
    result = invoke("run", config)
    assert result.exit_code == 2 and not proof.exists()
    message = result.output.strip().splitlines()[-1]
    assert "data_batch_3: not a CIFAR-10 python batch (refused to load pathlib" in message
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("run.json"))


def test_files_moved_between_splits_invalidate_the_cache(tmp_path: Path, cache_dir: Path) -> None:
    """Swapping train/ and test/ changes no file's name, size or time: the cache key holds
    each file's path below the root, so the set is decoded anew."""
    root = write_folder_layout(tmp_path / "tree")
    before = read_cifar10(root)
    assert (len(before.train), len(before.test)) == (100, 50)
    (root / "train").rename(root / "swap")
    (root / "test").rename(root / "train")
    (root / "swap").rename(root / "test")
    after = read_cifar10(root)
    assert (len(after.train), len(after.test)) == (50, 100)
    assert len(list(cache_dir.glob("*.npz"))) == 2


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_an_image_that_is_no_regular_file_is_refused_by_name(
    tmp_path: Path, cache_dir: Path, kind: str
) -> None:
    import os

    root = write_folder_layout(tmp_path / "tree")
    image = next((root / "train").glob("*/*.png"))
    image.unlink()
    if kind == "device":
        image.symlink_to("/dev/zero")  # would be read forever
    else:
        os.mkfifo(image)  # would block forever
    with pytest.raises(DataError, match=f"{image.name}: not a regular file"):
        read_cifar10(root)


def test_batches_and_tarball_members_past_their_size_are_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    import io
    import tarfile

    root = write_pickle_layout(tmp_path / "p")
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.unlink()
    batch.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="data_batch_2: not a regular file"):
        read_cifar10(root)

    tarball = tmp_path / "big.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:  # 2 MB of zeros: a few kB compressed
        member = tarfile.TarInfo("cifar/train/cat/0.png")
        member.size = 2 * 2**20
        tar.addfile(member, io.BytesIO(bytes(member.size)))
    with pytest.raises(DataError, match="member cifar/train/cat/0.png is 2,097,152 bytes"):
        read_cifar10(tarball)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "data of shape (2, 100)"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "label 10 outside the 10"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "1 labels for 2 images"),
        ({"labels": [0]}, "not a CIFAR-10 python batch ('data')"),
    ],
)
def test_a_malformed_batch_is_one_line_before_training(
    tmp_path: Path, pickle_root: Path, batch: dict, expected: str
) -> None:
    (pickle_root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    result = invoke("run", tiny_config(tmp_path, pickle_root))
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "results").rglob("run.json"))  # refused before any run


def _tar_with(folder: Path, tarball: Path, extra: list[tuple[str, bytes]]) -> Path:
    """``folder`` as ``cifar/`` in an uncompressed tarball, then the ``extra`` members."""
    import io
    import tarfile

    with tarfile.open(tarball, "w") as tar:
        tar.add(folder, arcname="cifar")
        for name, content in extra:
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return tarball


def test_tarball_members_that_leave_the_folder_are_refused_before_training(
    tmp_path: Path, cache_dir: Path, folder_root: Path
) -> None:
    """By both pipelines, once, before any run (the textbook one refused it in every run)."""
    evil = "cifar/train/cat/../../../../escaped.png"
    tarball = _tar_with(folder_root, tmp_path / "evil.tar", [(evil, b"png")])
    for pipeline in ("device", "torchvision"):
        data = {"root": str(tarball), "download": False, "pipeline": pipeline}
        result = invoke(
            "run", tiny_config(tmp_path, tarball, data=data), "--out", tmp_path / pipeline
        )
        assert result.exit_code == 2, result.output
        assert f"refusing member {evil!r} (it leaves the folder)" in result.output
        assert not (tmp_path / pipeline).exists()
    assert not list(tmp_path.rglob("escaped.png"))


def test_a_member_stored_twice_counts_once(
    tmp_path: Path, cache_dir: Path, folder_root: Path
) -> None:
    image = next((folder_root / "train").glob("*/*.png"))
    again = [(f"cifar/train/{image.parent.name}/{image.name}", image.read_bytes())]
    data = read_cifar10(_tar_with(folder_root, tmp_path / "twice.tar", again))
    assert (len(data.train), len(data.test)) == (100, 50)


def test_an_empty_cache_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnorder.core.files import cache_dir

    monkeypatch.setenv("BNORDER_CACHE", "")
    assert cache_dir() == Path.home() / ".cache" / "bnorder"


def test_a_folder_is_searched_for_other_data_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The search reads every record of the folder: once per process and folder, not once
    per run (a 600-run sweep read 360,000 records); a folder found to hold other data is
    searched again, so that every run there is refused."""
    from bnorder.runs import runloop

    searched: list[str] = []

    def search(output: str, fingerprint: str) -> str | None:
        searched.append(output)
        return "other" if output == "mixed" else None

    monkeypatch.setattr(runloop, "other_data", search)
    cache = runloop.ProcessCache()
    assert [cache.other_data("clean", "abc") for _ in range(3)] == [None] * 3
    assert [cache.other_data("mixed", "abc") for _ in range(2)] == ["other"] * 2
    assert cache.other_data("clean", "def") is None  # other data: its own search
    assert searched == ["clean", "mixed", "mixed", "clean"]


def test_runs_on_other_data_are_refused_and_never_averaged(
    tmp_path: Path, pickle_root: Path
) -> None:
    """The same config over other files: seed 1 on other data is refused in a folder that
    holds seed 0 (it was trained and averaged with it); runs that got there anyway are
    shown apart by compare."""
    import json
    import shutil

    other = write_pickle_layout(tmp_path / "other", train_per_class=12)
    schemes = {"bn_only": ["bn", "act"]}
    first = tiny_config(tmp_path, pickle_root, schemes=schemes, train={"epochs": 1})
    assert invoke("run", first).exit_code == 0
    out = tmp_path / "results"
    ours = json.loads((out / "bn_only" / "seed0" / "run.json").read_text())["data_fingerprint"]
    second = tiny_config(tmp_path, other, schemes=schemes, train={"epochs": 1}, seeds=[1])
    result = invoke("run", second)
    assert result.exit_code == 2
    assert f"{out / 'bn_only' / 'seed0'} trained on other data (fingerprint {ours}" in (
        " ".join(result.output.split())
    )
    assert not (out / "bn_only" / "seed1").exists()

    copy = Path(shutil.copytree(out / "bn_only" / "seed0", out / "bn_only" / "seed2"))
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "seed": 2, "data_fingerprint": "f" * 16}))
    compared = invoke("compare", out)
    assert compared.exit_code == 0 and "runs of 2 different configs, shown apart" in (
        compared.output
    )


def test_a_cache_that_cannot_be_written_leaves_no_debris(
    tmp_path: Path, cache_dir: Path, folder_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the decoded cache is written: the data still loads (decoded again
    next time) and no temporary file stays to fill the disk further."""
    full_disk_writing(monkeypatch, ".npz")
    assert_is_fake_set(read_cifar10(folder_root))
    assert not list(cache_dir.rglob("*.partial"))
    assert not list(cache_dir.glob("*.npz"))


def test_a_pickle_cannot_allocate_an_array_it_does_not_hold() -> None:
    """numpy's _reconstruct called with a large shape and no data would allocate gigabytes
    from a few bytes; only the empty arrays real pickles start from are allowed."""
    from bnorder.data.formats import _unpickle

    crafted = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
        b"J\x00\x00\x10\x00M\x00\x0c\x86q\x02U\x01Bq\x03\x87q\x04Rq\x05."
    )
    with pytest.raises(DataError, match=r"refused an array of shape \(1048576, 3072\)"):
        _unpickle(crafted, "batch")


# ---------------------------------------------------------------- hostile input (issue 26)


def _two_class_tree(root: Path) -> Path:
    """train/ and test/ of classes ant and bee, 8×8 one-colour PNGs (all of one byte size)."""
    from PIL import Image

    for split, cls, colour in (
        ("train", "ant", 10),
        ("train", "bee", 200),
        ("test", "ant", 10),
        ("test", "bee", 200),
    ):
        (root / split / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (colour + i, 0, 0)).save(root / split / cls / f"{i}.png")
    return root


def _same_stat(path: Path, before: os.stat_result) -> None:
    assert path.stat().st_size == before.st_size  # the case: size and time say nothing
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_tarball_replaced_by_one_of_the_same_size_and_time_is_decoded_anew(
    tmp_path: Path,
) -> None:
    """Two images moved between classes: tar rounds sizes to blocks and ``cp -p`` keeps the
    time, so only the content tells; the cache key comes from it."""
    import tarfile

    from bnorder.data.sources import read_data

    root = _two_class_tree(tmp_path / "tree")
    tarball = tmp_path / "pets.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname="pets")
    first = read_data(tarball, "folder")
    before = tarball.stat()
    (root / "train" / "ant" / "0.png").rename(tmp_path / "moved.png")
    (root / "train" / "bee" / "0.png").rename(root / "train" / "ant" / "0.png")
    (tmp_path / "moved.png").rename(root / "train" / "bee" / "0.png")
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname="pets")
    _same_stat(tarball, before)
    second = read_data(tarball, "folder")
    assert not torch.equal(first.train.images, second.train.images)


def test_an_image_rewritten_with_the_same_size_and_time_is_decoded_anew(tmp_path: Path) -> None:
    from bnorder.data.sources import read_data

    root = _two_class_tree(tmp_path / "tree")
    first = read_data(root, "folder")
    ant, bee = root / "train" / "ant" / "0.png", root / "train" / "bee" / "0.png"
    before, ant_bytes = ant.stat(), ant.read_bytes()
    ant.write_bytes(bee.read_bytes())
    _same_stat(ant, before)
    second = read_data(root, "folder")
    assert not torch.equal(first.train.images, second.train.images)
    ant.write_bytes(ant_bytes)
    _same_stat(ant, before)
    assert torch.equal(read_data(root, "folder").train.images, first.train.images)


def test_tarball_images_are_decoded_as_they_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """140 members of 64 MiB of zeros (9 MB compressed) were all read into memory before the
    first was decoded: now each is read when it is decoded, and the first one refuses."""
    import io
    import tarfile

    from bnorder.data.sources import read_data

    tarball = tmp_path / "zeros.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for split, cls, i in [("train", "cat", i) for i in range(6)] + [
            ("test", "cat", 0),
            ("train", "dog", 0),
            ("test", "dog", 0),
        ]:
            member = tarfile.TarInfo(f"z/{split}/{cls}/{i}.png")
            member.size = 64 * 2**10
            tar.addfile(member, io.BytesIO(bytes(member.size)))
    read: list[str] = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(
        tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or real(self, m)
    )
    with pytest.raises(DataError, match=r"zeros.tar.gz/train/cat/0.png: cannot decode image"):
        read_data(tarball, "folder")
    assert read == ["z/train/cat/0.png"]


def test_a_source_is_hashed_once_a_process_while_it_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plan, validate and the first run each ask for the cache's name: the source's bytes are
    read once while its stat stays the same, and again once it is rewritten."""
    from bnorder.data import sources

    tarball = tar_folder(write_folder_layout(tmp_path / "f"), tmp_path / "d.tar.gz", "d")
    read: list[Path] = []
    hash_into = sources.hash_into
    monkeypatch.setattr(
        sources, "hash_into", lambda d, p, *a: (read.append(p), hash_into(d, p, *a))
    )
    first = [sources.cache_path(tarball, tmp_path / "cache") for _ in range(3)]
    assert len(set(first)) == 1 and read == [tarball]
    tarball.write_bytes(tarball.read_bytes() + b"\0")  # rewritten: its ctime moves
    assert sources.cache_path(tarball, tmp_path / "cache") != first[0] and len(read) == 2
