"""Grad-CAM (Selvaraju et al. 2017): where in the photo the evidence for a class lies.

The last feature map ``A`` (h x w x K) comes from the base; the class score ``y_c`` before the softmax is computed
from it under a ``GradientTape`` by the head's own layers; each channel is weighted by its mean gradient
``a_k = mean_ij dy_c/dA_ij^k`` and the map is ``ReLU(sum_k a_k A^k)``, upsampled to the image. Works for every
:class:`~tltool.viz.network.Network` with a head: linear runs (the fitted head's arrays in TensorFlow), fine-tuned
runs (the saved model's own sub-layers), from-scratch runs of ``tltool train`` (split after their last
convolutional map larger than 1x1) and flat Keras classifiers split by
:func:`~tltool.viz.network.classifier_network`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BadFilesWarning, BadImageError, TltoolError, did_you_mean
from ..images import DEFAULT_MAX_PIXELS, check_image, load_image
from ..plotting import pyplot, save_figure
from ..report import write_picture_report
from ..runs import check_run_dir, new_run_dir, writes_runs
from ..utils import shown_name
from .network import Network, open_run
from .plots import overlay_heat

BATCH = 16


@dataclass
class GradCam:
    """One image's Grad-CAM: ``heat`` (0..1, the image's size) for class ``class_index``."""

    image: np.ndarray  # uint8, what the network saw
    heat: np.ndarray  # (H, W) in 0..1, upsampled
    coarse: np.ndarray  # (h, w) on the feature map's grid, before normalisation
    class_index: int
    probs: np.ndarray
    path: str | None = None

    @property
    def probability(self) -> float:
        return float(self.probs[self.class_index])

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

    def overlay(self, alpha: float = 0.45) -> np.ndarray:
        return overlay_heat(self.image, self.heat, alpha)


def grad_cam(network: Network, images: np.ndarray, class_index: int | Sequence[int] | None = None) -> list[GradCam]:
    """Grad-CAM for a batch of raw images ``(B, H, W, 3)`` in 0..255; ``class_index`` None: the predicted class."""
    from .._tf import tf

    if network.head is None:
        raise TltoolError(f"Grad-CAM needs a class score to explain, and {network.name}: {network.no_head_reason}.")
    images = np.asarray(images)
    x = tf.convert_to_tensor(images.astype(np.float32))
    # Only d(score)/d(feature map) is needed, so the base runs outside the tape: nothing of it is recorded, and no
    # gradient flows through its convolutions (TF 2.21 on CPU crashes in the input gradient of some small 1x1
    # stride-2 convolutions at batch size 1).
    fmap = network.feature_map(x)
    with tf.GradientTape() as tape:
        tape.watch(fmap)
        scores, probs = network.head(fmap)
        if class_index is None:
            target = tf.argmax(probs, axis=1, output_type=tf.int32)
        else:
            wanted = np.zeros(len(images), dtype=np.int32) + np.asarray(class_index, dtype=np.int32)
            target = tf.constant(wanted)
        chosen = tf.gather(scores, target, axis=1, batch_dims=1)
    grads = tf.cast(tape.gradient(chosen, fmap), tf.float32)
    fmap = tf.cast(fmap, tf.float32)
    weights = tf.reduce_mean(grads, axis=[1, 2])  # (B, K): the channel's importance for the class
    cam = tf.nn.relu(tf.einsum("bijk,bk->bij", fmap, weights))
    size = images.shape[1:3]
    up = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0].numpy()
    out = []
    for i in range(len(images)):
        top = up[i].max()
        heat = up[i] / top if top > 0 else np.zeros_like(up[i])
        out.append(GradCam(images[i].astype(np.uint8), heat.astype(np.float32), cam[i].numpy(),
                           int(target[i]), np.asarray(probs[i], dtype=np.float64)))
    return out


def class_index_of(network: Network, name: str | None) -> int | None:
    """``--class NAME`` as an index of the run's classes (a clear error naming the choices)."""
    if name is None:
        return None
    classes = network.classes or []
    if name in classes:
        return classes.index(name)
    raise did_you_mean(name, classes, "class")


def gradcam_paths(network: Network, paths: Sequence[str | Path], class_index: int | None = None) -> list[GradCam]:
    """Grad-CAM for image files, decoded by the shared decode function at the network's input size."""
    out: list[GradCam] = []
    for start in range(0, len(paths), BATCH):
        chunk = [str(p) for p in paths[start:start + BATCH]]
        images = np.stack([load_image(p, network.image_size, network.resize, network.max_pixels) for p in chunk])
        for path, cam in zip(chunk, grad_cam(network, images, class_index)):
            cam.path = path
            out.append(cam)
    return out


def gradcam_overlays(run: str | Path | Network, paths: Sequence[str | Path], size: int | None = 128,
                     class_index: int | Sequence[int] | None = None, alpha: float = 0.45) -> list[np.ndarray | None]:
    """Heat-map overlays (uint8 RGB, ``size`` px square) for report grids, one per path, in order.

    ``run``: a run folder (linear or fine-tuned; its model.json and head or model.keras must be written) or an
    opened :class:`Network`. ``class_index``: None explains each image's predicted class, an int one class for all,
    a sequence one class per image (e.g. the true labels). An unreadable file gives None in its place, so a report
    can fall back to the plain image.
    """
    from PIL import Image

    network = run if isinstance(run, Network) else open_run(run)
    per_image = class_index if isinstance(class_index, Sequence) else [class_index] * len(paths)
    out: list[np.ndarray | None] = []
    for path, index in zip(paths, per_image):
        try:
            cam = gradcam_paths(network, [path], None if index is None else int(index))[0]
        except BadImageError:
            out.append(None)
            continue
        picture = cam.overlay(alpha)
        if size is not None and picture.shape[:2] != (size, size):
            picture = np.asarray(Image.fromarray(picture).resize((size, size), Image.BILINEAR))
        out.append(picture)
    return out


def _caption(network: Network, cam: GradCam) -> str:
    name = (network.classes or [])[cam.class_index] if network.classes else str(cam.class_index)
    text = f"{name} p={cam.probability:.2f}"
    if cam.predicted != cam.class_index:
        pred = network.classes[cam.predicted] if network.classes else str(cam.predicted)
        text += f"\n(predicted {pred} p={cam.probs[cam.predicted]:.2f})"
    return text


def plot_gradcams(network: Network, cams: Sequence[GradCam], target: Path, pairs_per_row: int = 2) -> None:
    """Each image beside its Grad-CAM overlay; the class and its probability in the overlay's title."""
    import math

    plt = pyplot()
    per_row = min(pairs_per_row, len(cams))
    rows = math.ceil(len(cams) / per_row)
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(3.0 * 2 * per_row, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, cam in enumerate(cams):
        r, c = divmod(i, per_row)
        ax_img, ax_cam = axes[r, 2 * c], axes[r, 2 * c + 1]
        ax_img.imshow(cam.image)
        ax_img.set_title(Path(cam.path).name[:32] if cam.path else "image", fontsize=8)
        ax_cam.imshow(cam.overlay())
        ax_cam.set_title(_caption(network, cam), fontsize=9)
    kind = network.config.get("kind")
    net = network.config.get("backbone") or network.config.get("arch") or "its backbone"  # arch: a train run
    what = f" ({kind} run on {net})" if kind else ""
    fig.suptitle(f"Grad-CAM: {network.name}{what}; heat = evidence for the class in the title", fontsize=11)
    save_figure(fig, target)


@dataclass
class GradCamResult:
    cams: list[GradCam]
    classes: list[str]
    run_dir: Path
    png: Path


def readable_images(paths: Sequence[str | Path],
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[str], list[BadImageError]]:
    """The files that decode, and the errors of those that do not (named in one :class:`BadFilesWarning`), before
    any network runs; none readable is an error."""
    readable, skipped = [], []
    for path in paths:
        try:
            check_image(path, max_pixels)
            readable.append(str(path))
        except BadImageError as error:
            skipped.append(error)
    if skipped and not readable:
        raise TltoolError(f"none of the {len(skipped)} image(s) can be read: " + "; ".join(map(str, skipped)))
    if skipped:
        named = "\n  ".join(map(str, skipped))
        warnings.warn(f"{len(skipped)} file(s) skipped:\n  {named}", BadFilesWarning, stacklevel=3)
    return readable, skipped


@writes_runs
def visualize_gradcam(images: Sequence[str | Path], model: str | Path, class_name: str | None = None,
                      out: str | Path | None = None, network: Network | None = None,
                      force: bool = False) -> GradCamResult:
    """``tltool viz gradcam``: ``gradcam.png`` (image | overlay per photo), ``metrics.json`` and ``report.md`` in a
    run folder."""
    check_run_dir(out, force, reads=(model, *images), kind="viz")  # `--model RUN --out RUN --force` replaced the run
    network = network or open_run(model)
    if network.head is None:
        raise TltoolError(f"Grad-CAM needs a class score to explain, and {network.name}: {network.no_head_reason}.")
    index = class_index_of(network, class_name)
    readable, skipped = readable_images(images, network.max_pixels)
    cams = gradcam_paths(network, readable, index)
    run_dir = new_run_dir("viz", "gradcam", network.name, out=out, force=force)
    png = run_dir / "gradcam.png"
    plot_gradcams(network, cams, png)
    classes = network.classes or []
    write_picture_report(run_dir, f"{network.name}: Grad-CAM", {
        "run": str(model), "explained": "named class" if class_name else "predicted class",
        "images": [{"path": cam.path, "class": classes[cam.class_index], "probability": cam.probability,
                    "predicted": classes[cam.predicted], "predicted_probability": float(cam.probs[cam.predicted]),
                    "feature_map": list(cam.coarse.shape)} for cam in cams],
        "png": "gradcam.png",
        "skipped": [{"path": e.path, "reason": e.reason, "detail": e.detail} for e in skipped],
    }, "gradcam.png", [f"{shown_name(cam.path)}: {classes[cam.class_index]} {cam.probability:.2f} (predicted "
                       f"{classes[cam.predicted]} {float(cam.probs[cam.predicted]):.2f})" for cam in cams]
       + [f"{len(skipped)} image(s) not readable, named in metrics.json"] * bool(skipped))
    return GradCamResult(cams, classes, run_dir, png)
