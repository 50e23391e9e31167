"""The one tf.data pipeline: shapes, dtypes, labels, determinism."""
from __future__ import annotations

import warnings

import numpy as np

from tltool.dataset import label_indices, load_dataset
from tltool.images import load_image
from tltool.augment import SeededTransform
from tltool.pipeline import image_dataset


def test_pipeline_on_real_photos(flowers):
    ds = load_dataset(flowers)
    records = ds.subset("val")
    labels = label_indices(records, ds.classes)
    batches = list(image_dataset([r.path for r in records], labels, image_size=96, batch_size=16))
    images = np.concatenate([b[0].numpy() for b in batches])
    got = np.concatenate([b[1].numpy() for b in batches])
    assert images.shape == (len(records), 96, 96, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255 and images.std() > 10
    np.testing.assert_array_equal(got, labels)  # order is kept
    # the pipeline decodes exactly as the shared decode function does
    np.testing.assert_array_equal(images[3], load_image(records[3].path, 96).astype(np.float32))


def test_one_hot_labels_and_no_labels(tmp_path):
    from helpers import noise_image

    paths = [str(noise_image(tmp_path / f"{i}.jpg", seed=i)) for i in range(5)]
    x, y = next(iter(image_dataset(paths, [0, 1, 2, 1, 0], image_size=40, batch_size=5, num_classes=3)))
    assert y.shape == (5, 3) and y.numpy()[1].tolist() == [0, 1, 0]
    only = next(iter(image_dataset(paths, image_size=40, batch_size=5)))
    assert only.shape == (5, 40, 40, 3)


def test_augmented_pipeline_is_deterministic_given_seed(tmp_path):
    import albumentations as A

    from helpers import noise_image

    paths = [str(noise_image(tmp_path / f"{i}.jpg", seed=i, size=(90, 90))) for i in range(8)]
    transform = SeededTransform(A.Compose([A.RandomResizedCrop((48, 48), scale=(0.3, 1.0)), A.HorizontalFlip()]))

    def run(seed):
        ds = image_dataset(paths, list(range(8)), image_size=64, output_size=48, transform=transform, shuffle=True,
                           seed=seed, batch_size=8)
        return [(x.numpy(), y.numpy()) for x, y in ds.repeat(2)]  # two epochs

    a, b, c = run(1), run(1), run(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert a[0][0].shape == (8, 48, 48, 3)
    assert not np.array_equal(a[0][0], a[1][0])  # a new draw each epoch
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_a_file_the_decode_cannot_read_is_skipped_blanked_or_an_error(tmp_path):
    import pytest

    from helpers import jpeg_bytes, noise_image
    from tltool.images import DecodeLog

    good = [str(noise_image(tmp_path / f"g{i}.jpg", seed=i)) for i in range(3)]
    whole = jpeg_bytes((120, 120))
    bad = tmp_path / "half.jpg"
    bad.write_bytes(whole[: len(whole) // 2])
    paths = [good[0], str(bad), good[1], good[2]]
    log = DecodeLog()
    with pytest.warns(UserWarning, match="half.jpg"):
        batches = list(image_dataset(paths, [0, 1, 2, 3], image_size=32, batch_size=8, on_bad="skip", log=log))
    assert [int(x) for x in batches[0][1]] == [0, 2, 3]  # the training set loses the one example
    assert list(log.failures) == [str(bad)]
    zeros = next(iter(image_dataset(paths, image_size=32, batch_size=8, on_bad="zeros", log=DecodeLog())))
    assert zeros.shape[0] == 4 and float(zeros[1].numpy().max()) == 0.0 and float(zeros[0].numpy().max()) > 0
    from tltool._tf import tf

    with pytest.raises(tf.errors.OpError, match="half.jpg: truncated or corrupt"):  # the default
        list(image_dataset(paths, [0, 1, 2, 3], image_size=32, batch_size=8))


def test_shards_decode_only_their_files_and_together_give_one_machines_batches(tmp_path):
    """Two workers, each with its share of every global batch of 4 (blocks of 2): each decodes half the files,
    and their batches side by side are the single run's, shuffle and augmentation seeds included."""
    from helpers import noise_image
    from tltool import images

    paths = [str(noise_image(tmp_path / f"g{i}.jpg", seed=i)) for i in range(8)]
    labels = list(range(8))

    def flip_by_seed(image, seed):
        return image[:, ::-1] if seed % 2 else image

    def run(**shard):
        before = images.decode_count()
        ds = image_dataset(paths, labels, image_size=32, batch_size=4 if not shard else 2, shuffle=True, seed=7,
                           transform=flip_by_seed, **shard)
        assert int(ds.cardinality()) == 2  # known: a training loop counts its steps
        batches = list(ds)
        return batches, images.decode_count() - before

    whole, decoded = run()
    assert decoded == 8
    parts = [run(shard=(i, 2), shard_block=2) for i in range(2)]
    assert [n for _, n in parts] == [4, 4]
    for k, (images_k, labels_k) in enumerate(whole):
        together = [np.concatenate([parts[w][0][k][j] for w in range(2)]) for j in range(2)]
        np.testing.assert_array_equal(together[1], labels_k)
        np.testing.assert_array_equal(together[0], images_k)
    assert sorted(np.concatenate([lab for _, lab in whole]).tolist()) == labels


def test_thread_pool_batches_equal_the_tf_data_batches_with_bad_files_blanked_or_raised(tmp_path):
    """tltool.batches (the feed of an engine outside TensorFlow) decodes exactly what tf.data does, in order."""
    import pytest

    from helpers import jpeg_bytes, noise_image
    from tltool.batches import image_batches
    from tltool.errors import BadImageError
    from tltool.images import DecodeLog

    paths = [str(noise_image(tmp_path / f"g{i}.jpg", seed=i, size=(90 + 7 * i, 60))) for i in range(9)]
    whole = jpeg_bytes((120, 120))
    (tmp_path / "half.jpg").write_bytes(whole[: len(whole) // 2])
    paths.insert(4, str(tmp_path / "half.jpg"))
    tf_log, pool_log = DecodeLog(), DecodeLog()
    with pytest.warns(UserWarning, match="half.jpg"):
        expected = np.concatenate([b.numpy() for b in image_dataset(paths, image_size=40, resize="crop",
                                                                     batch_size=4, on_bad="zeros", log=tf_log)])
    batches = list(image_batches(paths, image_size=40, resize="crop", batch_size=4, log=pool_log, threads=3))
    assert [len(b) for b in batches] == [4, 4, 2] and batches[0].dtype == np.uint8  # a runner makes its float32
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert float(expected[4].max()) == 0.0 and list(pool_log.failures) == list(tf_log.failures) == paths[4:5]
    with pytest.raises(BadImageError, match="half.jpg"), pytest.warns(UserWarning, match="half.jpg"):
        list(image_batches(paths, image_size=40, batch_size=4, on_bad="raise"))
    assert list(image_batches([], image_size=40)) == []


def test_a_short_last_global_batch_is_split_evenly_so_every_worker_takes_the_same_steps():
    """A collective step needs every worker: 11 elements, global batches of 4 (2 workers x 2): 2 full batches and a
    tail of 3 dealt 1 and 2; a tail of 1 cannot reach both workers and is dropped."""
    from tltool.pipeline import _keep_share, shard_layout
    from tltool._tf import tf

    assert shard_layout(11, 2, 2) == (2, 3) and shard_layout(9, 2, 2) == (2, 0) and shard_layout(8, 2, 2) == (2, 0)
    shares = [list(_keep_share(tf.data.Dataset.range(11), (i, 2), 2).as_numpy_iterator()) for i in range(2)]
    assert shares == [[0, 1, 4, 5, 8], [2, 3, 6, 7, 9, 10]]
    batches = [int(_keep_share(tf.data.Dataset.range(n), (i, 2), 2).batch(2).cardinality()) for n in (11, 9)
               for i in range(2)]
    assert batches == [3, 3, 2, 2]


def test_mixup_blends_each_batch_with_itself_reversed_repeatably(tmp_path):
    import pytest

    from helpers import noise_image

    paths = [str(noise_image(tmp_path / f"g{i}.jpg", seed=i)) for i in range(6)]

    def batches(**kw):
        return [(x.numpy(), y.numpy()) for x, y in image_dataset(paths, [0, 1, 2, 0, 1, 2], image_size=16,
                                                                  batch_size=3, num_classes=3, seed=5, **kw)]

    plain, mixed = batches(), batches(mixup=0.4)
    for (x, y), (mx, my) in zip(plain, mixed):
        w = float(my[0][np.argmax(y[0])]) if np.argmax(y[0]) != np.argmax(y[-1]) else None
        np.testing.assert_allclose(my.sum(axis=1), 1.0, atol=1e-6)  # still a distribution over the classes
        assert not np.allclose(mx, x)  # blended
        if w is not None:  # the first label's weight is the blend's weight: the pixels follow it
            np.testing.assert_allclose(mx[0], w * x[0] + (1 - w) * x[-1], atol=1e-3)
    again = batches(mixup=0.4)
    np.testing.assert_array_equal(again[0][0], mixed[0][0])  # seeded: the same run gives the same batches
    with pytest.raises(ValueError, match="one-hot"):
        image_dataset(paths, [0, 1, 2, 0, 1, 2], image_size=16, mixup=0.4)


def test_an_augmentation_file_written_by_albumentations_loads_and_a_hostile_one_is_one_clear_error(tmp_path):
    """--augment FILE.yaml was read by plain yaml.safe_load: an alias bomb ran for as long as its checks took, and a
    key given twice kept the last silently."""
    import albumentations as A
    import pytest

    from tltool.augment import build_augmentation
    from tltool.errors import TltoolError
    from helpers import deadline

    mine = tmp_path / "aug.yaml"
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(mine), data_format="yaml")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(build_augmentation(str(mine), 32, seed=0)(image, seed=1), image[:, ::-1])
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)))
    twice = tmp_path / "twice.yaml"
    twice.write_text(mine.read_text() + "transform:\n  __class_fullname__: Compose\n  transforms: []\n")
    for path, why in ((bomb, r"an alias \(\*a\) is not allowed in an augmentation file"),
                      (twice, "the key 'transform' is given twice")):
        with deadline(10), pytest.raises(TltoolError, match=rf"--augment .*{path.name}: not an albumentations .*{why}"):
            build_augmentation(str(path), 32, seed=0)
    # a misspelt argument was albumentations' warning alone, never shown: Rotate turned by its default ±90°
    misspelt = tmp_path / "rot5.yaml"
    misspelt.write_text("transform:\n  __class_fullname__: Compose\n  transforms:\n"
                        "    - __class_fullname__: Rotate\n      limt: 5\n      p: 1.0\n")
    with pytest.raises(TltoolError, match=r"rot5\.yaml: Argument\(s\) 'limt' are not valid for transform Rotate; "
                                          "albumentations would leave them at its defaults"):
        build_augmentation(str(misspelt), 32, seed=0)
    # what albumentations 1.x's A.save wrote (always_apply: false on each transform) still loads, said once
    old_format = tmp_path / "v1.yaml"
    old_format.write_text(misspelt.read_text().replace("limt: 5", "always_apply: false"))
    from tltool.errors import AugmentationWarning

    with pytest.warns(AugmentationWarning, match="'always_apply' are not valid"):
        build_augmentation(str(old_format), 32, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_augmentation(str(old_format), 32, seed=0)  # not again in this process (a --cv fold builds it again)
    # what albumentations writes itself loads without a word, for every preset
    from tltool.augment import PRESETS

    for name, transforms in PRESETS.items():
        if transforms is not None:
            saved = tmp_path / f"{name}.yaml"
            A.save(A.Compose(transforms(32)), str(saved), data_format="yaml")
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                build_augmentation(str(saved), 32, seed=0)


def test_an_augmentation_file_the_network_cannot_take_is_refused_before_training(tmp_path):
    """A crop larger than the training images was albumentations' CropSizeError (in `augment preview` and `train`),
    and one-channel grey reached TensorFlow mid-training as 'Incompatible shapes', leaving a half-made run."""
    import albumentations as A
    import pytest

    from helpers import deadline
    from tltool.augment import build_augmentation
    from tltool.errors import TltoolError

    image = np.random.default_rng(0).integers(0, 256, (37, 37, 3), dtype=np.uint8)
    cases = {"crop": (A.Compose([A.CenterCrop(1000, 1000)]), r"fails on a 37x37 training image \(CropSizeError"),
             "grey": (A.Compose([A.ToGray(num_output_channels=1, p=0.3)]), "turns an RGB image of bytes into 37x37 "
                      "uint8; the network takes 3 channels"),
             "float": (A.Compose([A.Normalize()]), "into 37x37x3 float32")}
    for name, (pipeline, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        A.save(pipeline, str(path), data_format="yaml")
        with pytest.raises(TltoolError, match=rf"--augment .*{name}\.yaml: .*{message}"):
            build_augmentation(str(path), 32, seed=0)
    # a size larger than any input: refused before albumentations or the probe allocate it (1.2 GB an image)
    for name, pipeline, message in (
            ("huge", A.Compose([A.Resize(20000, 20000)]), "Resize height 20000 px is larger than any input tltool "
                                                          r"takes \(4096 px\)"),
            ("huge-crop", A.Compose([A.RandomResizedCrop(size=(64, 9000))]), "RandomResizedCrop size 9000 px")):
        path = tmp_path / f"{name}.yaml"
        A.save(pipeline, str(path), data_format="yaml")
        with deadline(5), pytest.raises(TltoolError, match=rf"--augment .*{name}\.yaml: .*{message}"):
            build_augmentation(str(path), 32, seed=0)
    fine = tmp_path / "fine.yaml"
    A.save(A.Compose([A.Resize(4096, 64)]), str(fine), data_format="yaml")
    assert build_augmentation(str(fine), 32, seed=0)(image[:8, :8], seed=1).shape == (32, 32, 3)
    grey = tmp_path / "grey3.yaml"  # grey in three channels is fine
    A.save(A.Compose([A.ToGray(num_output_channels=3, p=1.0)]), str(grey), data_format="yaml")
    image = np.random.default_rng(0).integers(0, 256, (37, 37, 3), dtype=np.uint8)
    out = build_augmentation(str(grey), 32, seed=0)(image, seed=1)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 0], out[..., 1])


def test_a_bad_augmentation_file_is_refused_before_tensorflow_starts(tmp_path):
    """`finetune` and `train` imported TensorFlow (~10 s, the strategy is resolved first) before they read
    --augment FILE: a missing or malformed file is refused before, with nothing written."""
    import subprocess
    import sys

    from conftest import SAMPLE

    bad = tmp_path / "aug.yaml"
    bad.write_text("transform: [1, 2\n")
    script = ("import sys\nfrom tltool.cli import main\ntry:\n    main(sys.argv[1:], standalone_mode=False)\n"
              "except SystemExit as exit:\n    print('exit', exit.code, 'tensorflow' in sys.modules)\n")
    gone, malformed = (tmp_path / "gone.yaml", "no such file"), (bad, "not an albumentations pipeline")
    for command, (augment, why) in ((["finetune", str(SAMPLE)], malformed),
                                    (["train", str(SAMPLE), "--arch", "lenet5"], gone),
                                    (["finetune", str(SAMPLE), "--cv", "2"], malformed)):
        out = tmp_path / "run"
        done = subprocess.run([sys.executable, "-c", script, *command, "--augment", str(augment), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "exit 2 False", (command, done.stdout, done.stderr[-2000:])
        assert f"--augment {augment}: {why}" in done.stderr and not out.exists()
