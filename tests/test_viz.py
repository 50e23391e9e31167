"""``tltool viz`` and ``suspects``: filter grids, activation maps, Grad-CAM, the feature map, suspect labels."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import SAMPLE
from helpers import noise_image
from tltool.cli import main
from tltool.utils import write_json


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def refused(result, *words: str):
    """A user mistake: exit status 2, one clear line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "error:" in result.output
    for word in words:
        assert word in result.output, result.output


def first_conv_filters(model) -> int:
    """Counted independently of tltool.viz: the output channels of the first Conv2D met in the nested base."""
    from tltool._tf import keras

    for layer in model.layers:
        for inner in getattr(layer, "layers", [layer]):
            if isinstance(inner, keras.layers.Conv2D):
                return int(inner.kernel.shape[-1])
    raise AssertionError("no Conv2D")


# ----------------------------------------------------------------------------------------------------- filters
@pytest.mark.parametrize("backbone, size", [("efficientnet_lite0", 64), ("mobilenet_v2", 32)])
def test_filter_grid_has_one_tile_per_first_conv_filter(tmp_path, backbone, size):
    from tltool.backbones import create_backbone
    from tltool.viz import filter_grid, open_backbone

    weights = "imagenet" if backbone == "efficientnet_lite0" else "none"  # mobilenet_v2's weights need a download
    expected = first_conv_filters(create_backbone(backbone, weights=weights, image_size=size))
    grid = filter_grid(open_backbone(backbone, weights, size))
    assert grid.mode == "rgb" and grid.n_tiles == expected
    assert grid.tiles.shape[1:] == (*grid.kernel_shape[:2], 3)
    assert grid.tiles.min() >= 0 and grid.tiles.max() <= 1

    out = tmp_path / "filters"
    ok(invoke("viz", "filters", "--backbone", backbone, "--weights", weights, "--image-size", size, "--out", out))
    report = json.loads((out / "metrics.json").read_text())
    assert report["tiles"] == expected and report["kernel_shape"][-1] == expected
    assert Image.open(out / "filters.png").size[0] > 300
    # laid out as every run: metrics.json, a Markdown summary, the picture (filters.json alone before)
    assert f"{expected} tiles" in (out / "report.md").read_text() and "(filters.png)" in (out / "report.md").read_text()


def test_filters_of_another_layer_are_grey_tiles_per_input_channel(tmp_path):
    from tltool.viz import filter_grid, open_backbone

    net = open_backbone("efficientnet_lite0", image_size=64)
    grid = filter_grid(net, "block1a_project_conv")  # 1x1x32x16
    assert grid.mode == "grey" and grid.kernel_shape == (1, 1, 32, 16) and grid.n_tiles == 16 * 16
    depthwise = filter_grid(net, "3")  # block1a_dwconv, by index: one 3x3 kernel per channel
    assert depthwise.layer == "block1a_dwconv" and depthwise.n_tiles == 32 and depthwise.tiles.shape[1:] == (3, 3)


# ------------------------------------------------------------------------------------------------- activations
def test_activations_by_name_and_index_and_layer_listing(tmp_path):
    from tltool.viz import layer_activations, layer_table, open_backbone

    net = open_backbone("efficientnet_lite0", image_size=64)
    rows = layer_table(net)
    assert rows[0]["name"] == "stem_conv" and rows[0]["output"] == "32×32×32" and rows[0]["kernel"] == "3×3×3×32"
    image = np.asarray(Image.open(noise_image(tmp_path / "x.jpg", seed=1, size=(64, 64))))
    by_name = layer_activations(net, image, "block2a_expand_activation", max_maps=10)
    index = next(r["index"] for r in rows if r["name"] == "block2a_expand_activation")
    by_index = layer_activations(net, image, str(index), max_maps=10)
    assert by_name.shape == (32, 32, 96) and len(by_name.maps) == 10
    np.testing.assert_allclose(by_name.maps, by_index.maps)
    means = [s["mean"] for s in by_name.stats]
    assert means == sorted(means, reverse=True)  # strongest first

    out = tmp_path / "act"
    result = ok(invoke("viz", "activations", tmp_path / "x.jpg", "--image-size", 64, "--layer", -1, "--out", out))
    assert "top_activation" in result.output and (out / "activations.png").exists()
    listing = ok(invoke("viz", "layers", "--image-size", 64, "--conv"))
    assert "stem_conv" in listing.output and "stem_bn" not in listing.output


# ----------------------------------------------------------------------------------------------------- Grad-CAM
def test_gradcam_on_chelsea_heats_the_cat_not_the_border():
    import skimage.data

    from tltool.backbones.efficientnet_lite import EfficientNetLite0
    from tltool.backbones.layers import ImagePreprocessing
    from tltool.images import resize_image
    from tltool.viz import classifier_network, grad_cam

    model = EfficientNetLite0(include_top=True, weights="imagenet")
    net = classifier_network(model, "top_activation", "avg_pool", "predictions", ImagePreprocessing("lite"))
    image = np.asarray(resize_image(Image.fromarray(skimage.data.chelsea()), 224, "crop"))
    cam = grad_cam(net, image[None])[0]  # the top class
    top = int(np.argmax(np.asarray(model((image[None].astype(np.float32) - 127) / 128))))
    assert cam.class_index == top and 281 <= top <= 285  # a cat class of ImageNet
    heat, b = cam.heat, 224 // 4
    centre = heat[b:-b, b:-b].mean()
    frame = np.concatenate([heat[:28].ravel(), heat[-28:].ravel(), heat[28:-28, :28].ravel(),
                            heat[28:-28, -28:].ravel()]).mean()
    assert centre > 1.5 * frame, (centre, frame)


def make_finetune_run(run_dir: Path, size: int = 32) -> None:
    """A run with the structure `tltool finetune` saves, and weights chosen so Grad-CAM's answer is known:
    feature 0 = ReLU(R - G) (red pixels), feature 1 = ReLU(G - R) (green); class "red" scores f0 - f1."""
    from tltool._tf import keras
    from tltool.backbones.layers import ImagePreprocessing

    image = keras.Input((size, size, 3), name="image")
    fmap = keras.layers.Conv2D(2, 1, strides=2, use_bias=False, activation="relu", name="conv")(image)
    base = keras.Model(image, fmap, name="tinynet")
    pixels = keras.Input((size, size, 3), name="pixels")
    x = ImagePreprocessing("tf", name="preprocess")(pixels)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    probs = keras.layers.Dense(2, activation="softmax", name="classifier", dtype="float32")(x)
    model = keras.Model(pixels, probs)
    base.get_layer("conv").set_weights([np.array([[1, -1], [-1, 1], [0, 0]], np.float32).reshape(1, 1, 3, 2)])
    model.get_layer("classifier").set_weights([np.array([[-4, 4], [4, -4]], np.float32), np.zeros(2, np.float32)])
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    write_json(run_dir / "model.json", {"kind": "finetune", "backbone": "tinynet", "base_layer": "tinynet",
                                        "classes": ["green", "red"], "image_size": size, "resize": "crop"})


def red_square_image(path: Path, size: int = 32) -> Path:
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[..., 1] = 200  # green field
    pixels[:12, :12] = (220, 0, 0)  # a red square top-left
    Image.fromarray(pixels).save(path, "PNG")
    return path


def test_gradcam_of_a_finetuned_run_uses_its_layers(tmp_path):
    from tltool.errors import BadFilesWarning
    from tltool.models import load_run
    from tltool.viz import gradcam_overlays, visualize_gradcam

    run = tmp_path / "ft"
    make_finetune_run(run)
    image = red_square_image(tmp_path / "square.png")
    out = tmp_path / "cam"
    ok(invoke("viz", "gradcam", image, "--model", run, "--class", "red", "--out", out))
    report = json.loads((out / "metrics.json").read_text())
    expected = load_run(run).predict_paths([str(image)])[0]
    entry = report["images"][0]
    assert entry["class"] == "red" and entry["predicted"] == "green"  # the field is larger than the square
    assert entry["probability"] == pytest.approx(expected[1], abs=1e-5)
    assert f"square.png: red {entry['probability']:.2f} (predicted green" in (out / "report.md").read_text()

    from tltool.viz import gradcam_paths, open_run

    red = gradcam_paths(open_run(run), [image], class_index=1)[0]
    assert red.heat[:10, :10].mean() > 0.8 and red.heat[16:, 16:].max() < 0.05  # the evidence for red is the square
    green = gradcam_paths(open_run(run), [image])[0]  # predicted class
    assert green.class_index == 0 and green.heat[16:, 16:].mean() > 0.8 and green.heat[:8, :8].max() < 0.05
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.warns(BadFilesWarning, match=r"1 file\(s\) skipped:\n  .*broken.jpg: "):
        kept = visualize_gradcam([broken, image], run, "red", tmp_path / "cam-kept")
    assert [c.path for c in kept.cams] == [str(image)]
    assert kept.cams[0].probability == pytest.approx(expected[1], abs=1e-5)
    assert [s["path"] for s in json.loads((kept.run_dir / "metrics.json").read_text())["skipped"]] == [str(broken)]
    refused(invoke("viz", "gradcam", broken, "--model", run, "--out", tmp_path / "cam-none"), "none of the 1 image(s)",
            "broken.jpg")
    assert not (tmp_path / "cam-none").exists()
    overlays = gradcam_overlays(run, [image, tmp_path / "missing.jpg", image], size=64, class_index=[0, 0, 1])
    assert overlays[0].shape == (64, 64, 3) and overlays[0].dtype == np.uint8 and overlays[1] is None
    assert not np.array_equal(overlays[0], overlays[2])  # per-image classes: green vs red evidence

    result = ok(invoke("viz", "filters", "--model", run, "--out", tmp_path / "filters"))  # not ./runs of the repo
    assert "conv: 2 tiles" in result.output


def test_a_viz_of_a_run_refuses_to_write_its_report_over_that_run(tmp_path):
    """Before, `viz gradcam IMAGE --model RUN --out RUN --force` (and `viz filters` or `viz activations` with
    --model RUN) explained RUN, then replaced it with the picture's report: model.keras and model.json were gone.
    Evaluate and compare refused that already; now these do too, before any work, and the run is kept whole."""
    run = tmp_path / "ft"
    make_finetune_run(run)
    image = red_square_image(tmp_path / "square.png")
    kept = sorted(p.name for p in run.iterdir())
    for args in (["gradcam", image, "--model", run], ["filters", "--model", run],
                 ["activations", image, "--model", run]):
        refused(invoke("viz", *args, "--out", run, "--force"), f"--out {run}: holds ", "which this command reads")
        assert sorted(p.name for p in run.iterdir()) == kept
    ok(invoke("viz", "filters", "--model", run, "--out", run / "filters"))  # inside it, beside the model: fine


def test_gradcam_of_a_linear_run_matches_its_head(tmp_path):
    from tltool.heads import FittedHead
    from tltool.models import load_run
    from tltool.viz import gradcam_overlays, gradcam_paths, open_run

    rng = np.random.default_rng(0)
    run = tmp_path / "lin"
    run.mkdir()
    classes = ["a", "b", "c"]
    FittedHead("logreg", classes, mean=rng.normal(0, 0.1, 2560), scale=rng.uniform(0.5, 2, 2560),
               coef=rng.normal(0, 0.05, (3, 2560)), intercept=np.array([0.1, 0.0, -0.1])).save(run)
    write_json(run / "model.json", {"kind": "linear", "backbone": "efficientnet_lite0", "weights": "imagenet",
                                    "image_size": 64, "resize": "crop", "pool": "avgmax", "head": "logreg",
                                    "classes": classes})
    images = [noise_image(tmp_path / f"{i}.jpg", seed=i, size=(90, 70)) for i in range(3)]
    cams = gradcam_paths(open_run(run), images)
    expected = load_run(run).predict_paths([str(p) for p in images])
    np.testing.assert_allclose(np.stack([c.probs for c in cams]), expected, atol=1e-4)
    assert all(c.heat.shape == (64, 64) and 0 <= c.heat.min() and c.heat.max() <= 1 for c in cams)
    assert len(gradcam_overlays(run, images)) == 3
    refused(invoke("viz", "gradcam", images[0], "--model", run, "--class", "zebra"), "zebra", "Choices: a, b, c")


# ------------------------------------------------------------------------------------------ runs of `tltool train`
@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory) -> Path:
    """LeNet-5 trained from scratch for one epoch at 32 px on the demo shapes (`tltool train`)."""
    run = tmp_path_factory.mktemp("scratch") / "lenet"
    ok(invoke("train", SAMPLE, "--arch", "lenet5", "--image-size", 32, "--epochs", 1, "--batch-size", 16,
              "--out", run))
    return run


def trained_input(run: Path, image: Path) -> np.ndarray:
    """The image as the run's validation pipeline fed it to the model (float32 pixels, 1 x 32 x 32 x 3)."""
    from tltool.pipeline import image_dataset

    resize = json.loads((run / "model.json").read_text())["resize"]
    return next(iter(image_dataset([str(image)], image_size=32, resize=resize, batch_size=1))).numpy()


def test_filters_and_layers_of_a_train_run(lenet_run, tmp_path):
    """Refused before ("no 'preprocess' layer ... only fine-tuned runs"): a from-scratch net is now seen whole."""
    from tltool._tf import keras

    model = keras.saving.load_model(lenet_run / "model.keras", compile=False)
    c1 = model.get_layer("c1").kernel.numpy()  # (5, 5, 3, 6)
    result = ok(invoke("viz", "filters", "--model", lenet_run, "--out", tmp_path / "filters"))
    assert f"c1: {c1.shape[-1]} tiles of kernel 5x5x3x6" in result.output
    report = json.loads((tmp_path / "filters" / "metrics.json").read_text())
    assert report["tiles"] == first_conv_filters(model) == 6 and report["mode"] == "rgb"
    assert report["weights"]["max"] == pytest.approx(float(c1.max()))
    listing = ok(invoke("viz", "layers", "--model", lenet_run, "--conv")).output.splitlines()[1:]
    assert [line.split()[1:] for line in listing] == [["c1", "Conv2D", "28×28×6", "5×5×3×6"],
                                                      ["c3", "Conv2D", "10×10×16", "5×5×6×16"],
                                                      ["c5", "Conv2D", "1×1×120", "5×5×16×120"]]


def test_activations_of_a_train_run_are_the_layers_output_on_the_trained_input(lenet_run, tmp_path):
    from tltool._tf import keras
    from tltool.viz import visualize_activations

    image = next((SAMPLE / "star").glob("*.jpg"))
    model = keras.saving.load_model(lenet_run / "model.keras", compile=False)
    pixels = trained_input(lenet_run, image)
    for layer, maps in (("c3", 16), (None, 6)):  # default: the first conv (its tanh is inside it)
        grid = visualize_activations(image, model=lenet_run, layer=layer, out=tmp_path / f"act-{layer}")
        name = layer or "c1"
        expected = keras.Model(model.inputs, model.get_layer(name).output)(pixels).numpy()[0]
        assert grid.layer == name and grid.shape == expected.shape and len(grid.maps) == maps
        np.testing.assert_allclose(grid.maps, expected.transpose(2, 0, 1)[grid.channels], atol=1e-5)
        np.testing.assert_array_equal(grid.image, pixels[0].astype(np.uint8))
    refused(invoke("viz", "activations", image, "--model", lenet_run, "--layer", "f6"), "f6", "viz layers")


def test_gradcam_of_a_train_run_explains_its_last_conv_map(lenet_run, tmp_path):
    """The map is c3's (10x10: c5's is 1x1, one value), and the weights are the class score's gradients there,
    computed here by calling the net's own layers after c3 by hand."""
    from tltool._tf import keras, tf
    from tltool.models import load_run
    from tltool.viz import gradcam_paths, open_run

    images = [next((SAMPLE / c).glob("*.jpg")) for c in ("circle", "star")]
    model = keras.saving.load_model(lenet_run / "model.keras", compile=False)
    cams = gradcam_paths(open_run(lenet_run), images, class_index=2)
    np.testing.assert_allclose(np.stack([c.probs for c in cams]), load_run(lenet_run).predict_paths(
        [str(p) for p in images]), atol=1e-5)
    for image, cam in zip(images, cams):
        fmap = keras.Model(model.inputs, model.get_layer("c3").output)(trained_input(lenet_run, image))
        with tf.GradientTape() as tape:
            tape.watch(fmap)
            x = fmap
            for name in ("s4", "c5", "flatten", "f6"):
                x = model.get_layer(name)(x)
            out = model.get_layer("output")
            score = (tf.matmul(x, out.kernel) + out.bias)[0, 2]
        weights = tf.reduce_mean(tape.gradient(score, fmap), axis=[1, 2])[0]
        expected = np.maximum(np.einsum("ijk,k->ij", fmap.numpy()[0], weights.numpy()), 0)
        assert cam.coarse.shape == (10, 10) and cam.heat.shape == (32, 32) and cam.class_index == 2
        np.testing.assert_allclose(cam.coarse, expected, atol=1e-5 * max(1.0, expected.max()))
    result = ok(invoke("viz", "gradcam", *images, "--model", lenet_run, "--out", tmp_path / "cam"))
    assert [e["feature_map"] for e in json.loads((tmp_path / "cam" / "metrics.json").read_text())["images"]] == [
        [10, 10], [10, 10]] and "-> " in result.output


def test_viz_decodes_with_the_runs_own_decode_limit(lenet_run, tmp_path):
    """viz decoded every photo under the default --max-pixels, not the run's: a photo predict refuses (or takes)
    for this run was taken (or refused) by viz. Here the run's limit is below the photo's 64x64 = 4096 pixels."""
    from tltool.errors import TltoolError
    from tltool.models import load_run
    from tltool.viz import visualize_activations

    run = tmp_path / "run"
    shutil.copytree(lenet_run, run)
    config = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**config, "max_pixels": 4000}))
    image = next((SAMPLE / "star").glob("*.jpg"))
    assert load_run(run).max_pixels == 4000
    with pytest.raises(TltoolError, match="decompression bomb"):
        visualize_activations(image, model=run, out=tmp_path / "act")
    refused(invoke("viz", "gradcam", image, "--model", run, "--out", tmp_path / "cam"), "decompression bomb")
    assert not (tmp_path / "act").exists() and not (tmp_path / "cam").exists()


@pytest.mark.parametrize("arch, size, feature", [("resnet18", 64, "conv5_2_relu"), ("resnet18", 32, "conv4_2_relu"),
                                                 ("nin", 32, None), ("lenet5", 32, "c3")])
def test_scratch_gradcam_map_is_the_last_conv_map_the_rest_follows_from(arch, size, feature):
    """Not a 1x1 map (no place to point at), not a conv inside a residual block (the shortcut is added after it);
    the scores are those before the net's softmax, whether a Dense (LeNet, ResNet) or a bare softmax (NiN) makes it."""
    from tltool._tf import keras, tf
    from tltool.arch import build_arch
    from tltool.viz.network import is_map, scratch_head

    model = build_arch(arch, (size, size, 3), 3)
    feature_layer, head = scratch_head(model, [layer for layer in model.layers if is_map(layer)])
    if feature:
        assert feature_layer.name == feature
    h, w = feature_layer.output.shape[1:3]
    assert h * w > 1 and "Pooling" not in type(feature_layer).__name__
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    scores, probs = head(keras.Model(model.inputs, feature_layer.output)(pixels))
    np.testing.assert_allclose(probs, model(pixels), atol=1e-5)
    np.testing.assert_allclose(tf.nn.softmax(scores), model(pixels), atol=1e-5)


def test_a_scratch_net_without_a_map_to_point_at_is_refused_by_gradcam_only(tmp_path):
    """A net whose only map is 1x1 has nothing for Grad-CAM to point at: one line saying why; its filters still show."""
    from tltool._tf import keras

    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(image)
    x = keras.layers.Conv2D(4, 8, activation="relu", name="c1")(x)  # 8x8 -> 1x1
    probs = keras.layers.Dense(2, activation="softmax", name="output")(keras.layers.Flatten(name="flatten")(x))
    run = tmp_path / "tiny"
    run.mkdir()
    keras.Model(image, probs).save(run / "model.keras")
    write_json(run / "model.json", {"kind": "scratch", "arch": "tiny", "classes": ["a", "b"], "image_size": 8,
                                    "resize": "crop"})
    picture = noise_image(tmp_path / "x.jpg", seed=1, size=(40, 40))
    refused(invoke("viz", "gradcam", picture, "--model", run, "--out", tmp_path / "cam"), "Grad-CAM",
            "no convolutional map larger than 1x1", "--image-size")
    assert not (tmp_path / "cam").exists()
    filters = ok(invoke("viz", "filters", "--model", run, "--out", tmp_path / "f"))
    assert "c1: 4 tiles of kernel 8x8x3x4" in filters.output


# ---------------------------------------------------------------------------------------------------- embedding
def test_embedding_separates_colour_classes_tsne_and_pca(tmp_path):
    from tltool.features import extract_features
    from tltool.viz import visualize_embedding

    data = tmp_path / "colours"
    for seed, (name, colour) in enumerate((("red", (200, 30, 30)), ("green", (30, 180, 40)), ("blue", (30, 40, 200)))):
        colour_photos(data / name, colour, 14, seed)
    extract_features(str(data), tmp_path / "feat", image_size=32)
    out = tmp_path / "emb"
    result = ok(invoke("viz", "embedding", tmp_path / "feat", "--thumbnails", "--out", out))
    assert "tsne of 42 images" in result.output
    assert "t-SNE perplexity 30 lowered to 13.7: it must stay below a third of the 42 images" in result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["params"]["perplexity"] == pytest.approx(41 / 3) and report["params"]["perplexity_given"] == 30
    assert len(report["points"]) == 42 and {p["split"] for p in report["points"]} == {"train", "val"}
    assert report["nearest_neighbour_agreement"] > 0.9
    agreement = f"same label for {report['nearest_neighbour_agreement']:.0%} of them"
    assert agreement in (out / "report.md").read_text() and "(embedding.png)" in (out / "report.md").read_text()
    pca = visualize_embedding(tmp_path / "feat", out=tmp_path / "pca", method="pca")
    assert pca.method == "pca" and pca.coords.shape == (42, 2)
    for bad in ("0", "-5", "nan"):  # before: scikit-learn's InvalidParameterError traceback
        result = invoke("viz", "embedding", tmp_path / "feat", "--perplexity", bad, "--out", tmp_path / f"p{bad}")
        assert result.exit_code == 2 and "--perplexity must be a number above 0" in result.output


# ----------------------------------------------------------------------------------------------------- suspects
def test_suspects_finds_images_moved_to_a_wrong_class(flowers, tmp_path):
    data = tmp_path / "flowers"
    shutil.copytree(flowers / "train", data)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    files = [(c, p.name) for c in classes for p in sorted((data / c).iterdir())]
    rng = np.random.default_rng(0)  # 5 random photos, each moved to a random wrong class
    moved, originals = [], {}
    for i in rng.choice(len(files), 5, replace=False):
        source, name = files[i]
        target = classes[(classes.index(source) + int(rng.integers(1, len(classes)))) % len(classes)]
        shutil.move(data / source / name, data / target / name)
        moved.append(f"{target}/{name}")
        originals[f"{target}/{name}"] = source
    out = tmp_path / "suspects"
    # at 224 px, where these thresholds were measured (at the 288 px default 2 of the 4 suggestions found are right:
    # on 5 moved photos that is within noise, but this test keeps its numbers)
    ok(invoke("label", "suspects", data, "--features", tmp_path / "feat", "--top", 15, "--out", out,
              "--image-size", 224))
    with open(out / "suspects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "suggested", "score"] and len(rows) == 15
    found = [r for r in rows if r["path"] in moved]
    assert len(found) >= 4, (moved, rows)
    assert sum(r["suggested"] == originals[r["path"]] for r in found) >= 3
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert (out / "suspects.png").exists() and json.loads((out / "metrics.json").read_text())["n_images"] == 250


def colour_photos(folder: Path, colour, n: int, seed: int, prefix: str = "") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pixels = np.clip(np.array(colour) + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{prefix}{i}.png")
        out.append(folder / f"{prefix}{i}.png")
    return out


def test_suspects_runs_its_network_on_the_engine_asked_for(tmp_path, monkeypatch):
    """`label suspects` extracts features like probe, but had no --engine: it always ran `auto`."""
    from tltool.errors import TltoolError
    from tltool.labeler import suspects

    asked = []

    def extract_features(*args, engine="auto", **kwargs):
        asked.append(engine)
        raise TltoolError("stopped here by the test")

    monkeypatch.setattr(suspects, "extract_features", extract_features)
    data = tmp_path / "d"
    colour_photos(data / "red", (200, 30, 30), 3, seed=1, prefix="r")
    colour_photos(data / "blue", (30, 40, 200), 3, seed=2, prefix="b")
    for engine in ("tf", "litert", "auto"):
        result = invoke("label", "suspects", data, "--engine", engine, "--out", tmp_path / engine)
        assert result.exit_code == 2 and "stopped here by the test" in result.output, result.output
    assert asked == ["tf", "litert", "auto"]
    assert invoke("label", "suspects", data, "--engine", "onnx").exit_code == 2 and len(asked) == 3


def test_suspects_of_a_labeler_dataset_feed_its_review(tmp_path):
    """`label suspects DATASET` on the labeler's folder reads labels.csv; `label serve --review` takes the CSV."""
    from tltool.labeler.store import read_review

    dataset = tmp_path / "mine"
    red = colour_photos(dataset / "unlabeled", (200, 30, 30), 12, seed=1, prefix="r")
    blue = colour_photos(dataset / "unlabeled", (30, 40, 200), 12, seed=2, prefix="b")
    rows = ["path,label"] + [f"unlabeled/{p.name},red" for p in red] + [f"unlabeled/{p.name},blue" for p in blue]
    rows[1] = "unlabeled/r0.png,blue"  # a red photo labelled blue
    (dataset / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "s"
    ok(invoke("label", "suspects", dataset, "--image-size", 32, "--top", 5, "--features", tmp_path / "f", "--out", out))
    items, notes = read_review(dataset, out / "suspects.csv")
    assert not notes and len(items) == 5
    assert (items[0].path, items[0].label, items[0].suggested) == ("unlabeled/r0.png", "blue", "red")
    # the run's Markdown summary: every suspect of the CSV with its verdict, the contact sheet, the next step
    summary = (out / "report.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 5 and rows[0].startswith("| 1 | ") and rows[0].endswith("| blue | blue -> red | "
                                                                                   "unlabeled/r0.png |")
    assert "![suspects](suspects.png)" in summary and f"--review {out / 'suspects.csv'}" in summary
    # the README's loop: suspects of the exported split, reviewed in the labeler. The split's own paths
    # (train/blue/r0.png) were not found there: 24 notes, nothing queued for review
    ok(invoke("label", "export", dataset))
    split_out = tmp_path / "s2"
    ok(invoke("label", "suspects", tmp_path / "mine-split", "--image-size", 32, "--top", 5, "--features",
              tmp_path / "f2", "--out", split_out))
    items, notes = read_review(dataset, split_out / "suspects.csv")
    assert not notes and len(items) == 5 and all(item.path.startswith("unlabeled/") for item in items)
    assert (items[0].path, items[0].label, items[0].suggested) == ("unlabeled/r0.png", "blue", "red")
    summary = json.loads((split_out / "metrics.json").read_text())
    assert summary["review_command"] == f"tltool label serve {dataset} --review {split_out / 'suspects.csv'}"
    shown = invoke("label", "suspects", tmp_path / "mine-split", "--image-size", 32, "--top", 5, "--features",
                   tmp_path / "f2", "--out", split_out, "--force")
    assert shown.output.strip().splitlines()[-1] == f"review them first: {summary['review_command']}"


def test_suspects_of_class_folders_do_not_send_the_user_to_a_labeler_that_knows_none_of_their_labels(tmp_path):
    """On a student's class folders, `label suspects` printed `review them first: tltool label serve FOLDER
    --review ...`: that labeler opened with "0 labelled" (it reads labels.csv, not class folders), its first label
    starts a labels.csv in the user's folder, and `label suspects FOLDER` then reads that file instead of the
    folders."""
    dataset = tmp_path / "photos"
    colour_photos(dataset / "red", (200, 30, 30), 12, seed=1, prefix="r")
    colour_photos(dataset / "blue", (30, 40, 200), 12, seed=2, prefix="b")
    out = tmp_path / "s"
    shown = ok(invoke("label", "suspects", dataset, "--image-size", 32, "--top", 5, "--features", tmp_path / "f",
                      "--out", out, "--neighbours", 50))
    assert "label serve" not in shown.output.replace("`tltool label serve --review` is for", "")
    assert shown.output.strip().splitlines()[-1].startswith("to fix a label, move the photo into its class's folder")
    summary = json.loads((out / "metrics.json").read_text())
    assert "review_command" not in summary
    # 24 images: each has 23 others, the k used (its metrics.json said "the 50 nearest neighbours")
    assert summary["method"]["neighbours"].startswith("share of the 23 nearest neighbours")


def test_suspects_terminal_says_what_it_lists_and_keeps_a_kept_label_apart_from_a_relabel(tmp_path):
    """Before, `label suspects` printed "the 24 most suspect:" above 10 rows (the CSV held 24), and listed images
    no class fits better than their own as `red -> red`, right under "2 of 24 images are better supported as
    another class", as if a relabel were suggested."""
    dataset = tmp_path / "mine"
    red = colour_photos(dataset / "unlabeled", (200, 30, 30), 12, seed=1, prefix="r")
    blue = colour_photos(dataset / "unlabeled", (30, 40, 200), 12, seed=2, prefix="b")
    rows = ["path,label"] + [f"unlabeled/{p.name},red" for p in red] + [f"unlabeled/{p.name},blue" for p in blue]
    rows[1], rows[13] = "unlabeled/r0.png,blue", "unlabeled/b0.png,red"  # a red photo labelled blue, and back
    (dataset / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "s"
    result = ok(invoke("label", "suspects", dataset, "--image-size", 32, "--top", 24, "--features", tmp_path / "f",
                       "--out", out))
    with open(out / "suspects.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 24 and {(r["path"], r["suggested"]) for r in written[:2]} == {
        ("unlabeled/r0.png", "red"), ("unlabeled/b0.png", "blue")}
    assert sum(r["label"] != r["suggested"] for r in written) == 2  # every other row keeps its label
    lines = result.output.splitlines()
    start = lines.index("2 of 24 images are better supported as another class than their own; the 24 most suspect "
                        "are in suspects.csv, the first 10 here:")
    listed = lines[start + 1:start + 11]
    assert lines[start + 11:] == [f"-> {out / 'suspects.csv'}", f"-> {out / 'suspects.png'}",
                                  f"review them first: tltool label serve {tmp_path / 'mine'} --review "
                                  f"{out / 'suspects.csv'}"]
    for rank, (line, row) in enumerate(zip(listed, written), 1):
        verdict = (f"{row['label']} -> {row['suggested']}" if row["label"] != row["suggested"]
                   else f"{row['label']} (kept: no class fits better)")
        assert line == f"{rank:>3}  {float(row['score']):.3f}  {verdict}  {row['path']}"
    assert "red -> red" not in result.output and "blue -> blue" not in result.output


def test_suspects_terminal_says_when_it_lists_them_all(tmp_path):
    from tltool.labeler.suspects import Suspect, SuspectsResult, terminal_lines

    suspects = [Suspect(1, "a/1.jpg", "a", "b", 0.75, 0.2, 0.3, "train", "/d/a/1.jpg"),
                Suspect(2, "b/2.jpg", "b", "b", 0.25, 0.7, 0.8, "val", "/d/b/2.jpg")]
    result = SuspectsResult(suspects, tmp_path, tmp_path / "suspects.csv", tmp_path / "suspects.png",
                            {"disagreeing": 1, "n_images": 40})
    assert terminal_lines(result) == [
        "1 of 40 images are better supported as another class than their own; the 2 most suspect are in "
        "suspects.csv, all 2 here:",
        "  1  0.750  a -> b  a/1.jpg",
        "  2  0.250  b (kept: no class fits better)  b/2.jpg",
        f"-> {tmp_path / 'suspects.csv'}", f"-> {tmp_path / 'suspects.png'}"]
    assert terminal_lines(result, shown=1)[:2] == [
        "1 of 40 images are better supported as another class than their own; the 2 most suspect are in "
        "suspects.csv, the first 1 here:", "  1  0.750  a -> b  a/1.jpg"]
    result.summary["disagreeing"] = 0  # it said "0 of 40 images are better supported ...; the 2 most suspect"
    assert terminal_lines(result)[0] == ("none of the 40 images is better supported as another class than its own; "
                                         "the 2 with the least support for their label are in suspects.csv, all 2 "
                                         "here:")


# ------------------------------------------------------------------------------------------------------- errors
def test_every_command_refuses_a_bad_layer_or_a_missing_run(tmp_path):
    image = noise_image(tmp_path / "x.jpg", seed=3, size=(64, 64))
    missing = tmp_path / "no-such-run"
    small = ("--weights", "none", "--image-size", 32)
    refused(invoke("viz", "filters", *small, "--layer", "stem_cnov"), "stem_cnov", "stem_conv", "viz layers")
    refused(invoke("viz", "filters", *small, "--layer", "stem_bn"), "not a convolution")
    refused(invoke("viz", "filters", *small, "--layer", 9999), "9999")
    refused(invoke("viz", "activations", image, *small, "--layer", "nope"), "nope")
    for command in (("filters",), ("layers",), ("activations", image), ("gradcam", image)):
        refused(invoke("viz", *command, "--model", missing), str(missing), "no such run")
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    refused(invoke("viz", "gradcam", image, "--model", not_a_run), "no model.json")
    refused(invoke("viz", "filters", "--backbone", "efficientnet_lite0", "--model", not_a_run), "not both")
    refused(invoke("viz", "embedding", missing), "features.json")
    refused(invoke("viz", "suspects", missing), "no such file")
    refused(invoke("viz", "suspects", tmp_path, "--backbone", "resnet5"), "resnet5")
    run = tmp_path / "ft"
    make_finetune_run(run)
    refused(invoke("viz", "filters", "--model", run, "--layer", "classifier"), "classifier")
    refused(invoke("viz", "activations", image, "--model", run, "--layer", "pool"), "pool")
    refused(invoke("viz", "activations", image, "--model", run, "--max-maps", 0), "--max-maps")
    refused(invoke("viz", "layers", "--model", run, "--image-size", 64), "--image-size")
    knn = tmp_path / "knn"
    knn.mkdir()
    from tltool.heads import FittedHead

    FittedHead("knn", ["a", "b"], np.zeros(4), np.ones(4), train_x=np.eye(4), train_y=np.array([0, 0, 1, 1]),
               params={"n_neighbors": 1}).save(knn)
    write_json(knn / "model.json", {"kind": "linear", "backbone": "efficientnet_lite0", "weights": "none",
                                    "image_size": 32, "resize": "crop", "pool": "avg", "classes": ["a", "b"]})
    refused(invoke("viz", "gradcam", image, "--model", knn), "knn")
