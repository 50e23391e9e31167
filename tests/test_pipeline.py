"""The one tf.data pipeline: shapes, dtypes, labels, determinism."""
from __future__ import annotations

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
