"""Reference nets from scratch and the lectures' shape/parameter arithmetic: the numbers of the slides and papers.

Models are built, never trained. The parameter counts are the published ones (AlexNet 62.4 M, VGG's Table 2,
torchvision's ResNet and Keras's MobileNet figures)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tltool.arch import build_arch, get_arch, list_archs
from tltool.arch import calc
from tltool.cli import main
from tltool.errors import TltoolError


@pytest.fixture()
def free_models():
    """Release the big (ImageNet-sized) models right after a test."""
    yield
    from tltool._tf import keras

    keras.backend.clear_session()


def summary_of(name, **options):
    from tltool.arch.summary import arch_summary

    return arch_summary(build_arch(name, **options))


# ------------------------------------------------------------------------------------------------ the nets
def test_alexnet_matches_the_lecture_layer_by_layer(free_models):
    s = summary_of("alexnet")
    conv1, pool1 = s.row("conv1"), s.row("pool1")
    assert conv1.output_shape == (55, 55, 96)
    assert (conv1.weights, conv1.biases) == (34_848, 96)  # (11*11*3)*96 weights + 96 biases
    assert pool1.output_shape == (27, 27, 96) and pool1.parameters == 0
    expected = {"norm1": (27, 27, 96), "conv2": (27, 27, 256), "pool2": (13, 13, 256), "norm2": (13, 13, 256),
                "conv3": (13, 13, 384), "conv4": (13, 13, 384), "conv5": (13, 13, 256), "pool3": (6, 6, 256),
                "fc6": (4096,), "fc7": (4096,), "fc8": (1000,)}
    assert {name: s.row(name).output_shape for name in expected} == expected
    assert s.row("norm1").kind == "LocalResponseNormalization"
    assert s.row("conv2_pad").output_shape == (31, 31, 96)  # pad 2 written out, as on the slide
    assert s.parameters == 62_378_344 and s.non_trainable == 0


def test_alexnet_shapes_agree_with_the_pure_python_arithmetic():
    shape = (227, 227, 3)
    shape = calc.conv_layer(shape, 96, 11, stride=4).output_shape
    assert shape == (55, 55, 96)
    shape = calc.pool_layer(shape, 3, 2).output_shape
    conv2 = calc.conv_layer(shape, 256, 5, pad=2)
    assert calc.pool_layer(conv2.output_shape, 3, 2).output_shape == (13, 13, 256)
    assert conv2.parameters == 614_656


@pytest.mark.parametrize("name, parameters", [
    ("vgg_a", 132_863_336),
    ("vgg_c", 138_357_544 - 4_718_592),  # D with conv3_3, conv4_3, conv5_3 as 1x1: 8*(256^2 + 2*512^2) fewer
    ("vgg16", 138_357_544), ("vgg19", 143_667_240),
])
def test_vgg_configurations_have_the_papers_parameter_counts(name, parameters, free_models):
    s = summary_of(name, input_shape=(224, 224, 3), classes=1000)
    assert s.parameters == parameters
    assert s.row("pool5").output_shape == (7, 7, 512)
    assert s.row("fc8").output_shape == (1000,)


def test_vgg_c_has_1x1_convs_and_a_lrn_has_lrn():
    model = build_arch("vgg_c", input_shape=(32, 32, 3), classes=4)
    assert model.get_layer("conv3_3").kernel.shape == (1, 1, 256, 256)
    assert model.get_layer("conv5_3").kernel.shape == (1, 1, 512, 512)
    assert model.get_layer("conv5_2").kernel.shape == (3, 3, 512, 512)
    lrn = build_arch("vgg_a_lrn", input_shape=(32, 32, 3), classes=4)
    assert type(lrn.get_layer("norm1")).__name__ == "LocalResponseNormalization"
    assert lrn.count_params() == build_arch("vgg_a", input_shape=(32, 32, 3), classes=4).count_params()
    # B = A + conv1_2 (3*3*64*64 + 64) + conv2_2 (3*3*128*128 + 128); at 224x224 that is 133,047,848
    b = build_arch("vgg_b", input_shape=(32, 32, 3), classes=4).count_params()
    assert b - lrn.count_params() == 36_928 + 147_584 == 133_047_848 - 132_863_336
    assert get_arch("VGG-16").name == "vgg_d" and get_arch("vgg19").name == "vgg_e"


@pytest.mark.parametrize("name, trainable, bn_state", [("resnet18", 11_689_512, 9_600),
                                                       ("resnet34", 21_797_672, 17_024)])
def test_resnet_parameter_counts_match_torchvision(name, trainable, bn_state, free_models):
    s = summary_of(name, input_shape=(224, 224, 3), classes=1000)
    assert s.parameters == trainable
    assert s.non_trainable == bn_state  # moving mean + variance, not counted by torchvision
    assert s.row("conv1").output_shape == (112, 112, 64) and s.row("pool1").output_shape == (56, 56, 64)
    assert s.row("conv5_2_relu").output_shape == (7, 7, 512)


def test_lenet5_and_mobilenet_parameter_counts():
    lenet = summary_of("lenet5")
    assert lenet.parameters == 61_706
    assert [lenet.row(n).output_shape for n in ("c1", "s2", "c3", "s4", "c5")] == [
        (28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (1, 1, 120)]
    assert summary_of("mobilenet", input_shape=(224, 224, 3), classes=1000).parameters == 4_231_976


def test_googlenet_follows_the_papers_table():
    s = summary_of("googlenet", input_shape=(224, 224, 3), classes=1000)
    expected = {"conv1": (112, 112, 64), "pool1": (56, 56, 64), "conv2": (56, 56, 192), "pool2": (28, 28, 192),
                "inception3a_output": (28, 28, 256), "inception3b_output": (28, 28, 480), "pool3": (14, 14, 480),
                "inception4a_output": (14, 14, 512), "inception4d_output": (14, 14, 528),
                "inception4e_output": (14, 14, 832), "pool4": (7, 7, 832), "inception5b_output": (7, 7, 1024),
                "avgpool": (1024,)}
    assert {name: s.row(name).output_shape for name in expected} == expected
    assert 6.8e6 < s.weights < 7.0e6  # "about 6.8 million" weights (the paper's table leaves out biases)


def test_googlenet_aux_heads_add_two_outputs():
    model = build_arch("googlenet", input_shape=(96, 96, 3), classes=7, aux_heads=True)
    assert [tuple(o.shape) for o in model.outputs] == [(None, 7)] * 3
    with pytest.raises(TltoolError, match="auxiliary heads need inputs of at least 65"):
        build_arch("googlenet", input_shape=(64, 64, 3), aux_heads=True)


@pytest.mark.parametrize("name", [spec.name for spec in list_archs()])
def test_every_arch_builds_small_and_runs(name):
    spec = get_arch(name)
    size = max(spec.min_size, 32)
    model = build_arch(name, input_shape=(size, size, 3), classes=5, initializer="he_normal", batch_norm=True,
                       dropout=0.2)
    assert tuple(model.output.shape) == (None, 5)
    assert model.layers[1].name == "rescale"  # raw pixels 0..255 in, like every tltool model
    probabilities = np.asarray(model(np.full((1, size, size, 3), 128.0, np.float32), training=False))
    assert probabilities.shape == (1, 5) and np.isclose(probabilities.sum(), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "vgg_a"])
def test_min_size_is_the_smallest_input_that_fits(name):
    spec = get_arch(name)
    below = spec.min_size - 1
    with pytest.raises(TltoolError, match=f"at least {spec.min_size}x{spec.min_size}"):
        build_arch(name, input_shape=(below, below, 3))
    with pytest.raises(Exception):  # the raw builder: some layer gets a size of zero or less
        spec.build(input_shape=(below, below, 3), classes=2)


def test_the_image_size_range_admits_every_archs_smallest_input():
    """--image-size started at 16 while nin takes 8 (the 8x8 photos of `tltool data digits`): `train --arch nin
    --image-size 8` was refused by the range before the arch could say what it takes."""
    from tltool.scratch import ScratchConfig
    from tltool.settings import RANGES

    assert RANGES["image_size"].low <= min(spec.min_size for spec in list_archs())
    ScratchConfig(data="digits", arch="nin", image_size=8).validate()
    model = build_arch("nin", input_shape=(8, 8, 3), classes=10)
    assert tuple(model.output.shape) == (None, 10)


def test_bad_options_are_user_errors():
    with pytest.raises(TltoolError, match="Unknown architecture 'alexnt'.*'alexnet'"):
        build_arch("alexnt")
    with pytest.raises(TltoolError, match="initializer"):
        build_arch("lenet5", initializer="zeros_please")
    with pytest.raises(TltoolError, match="dropout"):
        build_arch("lenet5", dropout=1.5)


def test_initializer_and_batch_norm_switches_are_applied():
    model = build_arch("lenet5", initializer="lecun_normal", batch_norm=True)
    c1 = model.get_layer("c1")
    assert type(c1.kernel_initializer).__name__ == "LecunNormal" and not c1.use_bias
    assert type(model.get_layer("c1_bn")).__name__ == "BatchNormalization"
    plain = build_arch("lenet5")
    assert plain.get_layer("c1").use_bias and "c1_bn" not in [layer.name for layer in plain.layers]


# --------------------------------------------------------------------------------------------- LRN layer
def test_lrn_matches_tensorflow_and_loads_in_safe_mode(tmp_path):
    from tltool._tf import keras, tf
    from tltool.arch.layers import LocalResponseNormalization

    x = np.random.default_rng(0).normal(0, 20, (2, 5, 5, 9)).astype(np.float32)
    ours = LocalResponseNormalization()(x)
    reference = tf.nn.local_response_normalization(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    np.testing.assert_allclose(np.asarray(ours), reference.numpy(), rtol=1e-5, atol=1e-6)

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = LocalResponseNormalization(depth_radius=1, bias=1.0, name="norm1")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "lrn.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    norm = loaded.get_layer("norm1")
    assert type(norm).__name__ == "LocalResponseNormalization" and (norm.depth_radius, norm.bias) == (1, 1.0)
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


# ------------------------------------------------------------------------------------- conv arithmetic
def test_output_size_of_the_7x7_examples():
    assert calc.output_size(7, 3, stride=1) == 5
    assert calc.output_size(7, 3, stride=2) == 3
    with pytest.raises(TltoolError, match="does not fit") as error:
        calc.output_size(7, 3, stride=3)
    assert "2.33" in str(error.value) and "Strides that fit with padding 0: 1, 2" in str(error.value)
    assert calc.output_size(7, 3, stride=3, floor=True) == 2
    with pytest.raises(TltoolError, match="larger than the padded input"):
        calc.output_size(5, 7)


def test_ten_5x5_filters_on_32x32x3_have_760_parameters():
    layer = calc.conv_layer((32, 32, 3), filters=10, kernel=5, stride=1, pad=2)
    assert layer.output_shape == (32, 32, 10)
    assert (layer.weights, layer.biases, layer.parameters, layer.per_filter) == (750, 10, 760, 76)  # not 260


def test_receptive_field_dilation_and_pooling():
    rows = calc.receptive_field(calc.parse_stack("conv3,conv3,conv3"))
    assert [r.receptive_field for r in rows] == [3, 5, 7]
    assert calc.effective_kernel(3, dilation=2) == 5
    assert calc.receptive_field(calc.parse_stack("3d2"))[-1].receptive_field == 5
    resnet_stem = calc.receptive_field(calc.parse_stack("conv7s2p3,pool3s2p1"), (224, 224), floor=True)
    assert [(r.receptive_field, r.output_size) for r in resnet_stem] == [(7, (112, 112)), (11, (56, 56))]
    assert calc.pool_layer((224, 224, 64), 2).output_shape == (112, 112, 64)
    assert calc.parse_stack("pool3s2p1d1")[0] == calc.parse_stack("pool3p1s2")[0]
    with pytest.raises(TltoolError, match="not understood"):
        calc.parse_stack("conv3,three")


def test_arithmetic_and_cli_help_do_not_import_tensorflow():
    code = ("import sys, tltool.arch.calc, tltool.arch, tltool.cli; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------- CLI
def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_summary_prints_the_totals(free_models):
    result = invoke("arch", "summary", "vgg16")
    assert result.exit_code == 0, result.output
    assert "total: 138,357,544 parameters" in result.output
    assert "conv5_3" in result.output and "7x7x512" in result.output
    result = invoke("arch", "summary", "resnet18", "--input", "64", "--classes", "10")
    assert result.exit_code == 0, result.output
    assert "non-trainable" in result.output and "fc" in result.output


def test_cli_conv_calc():
    result = invoke("arch", "conv-calc", "--input", "32x32x3", "--filters", "10", "--kernel", "5", "--stride", "1",
                    "--pad", "2")
    assert result.exit_code == 0, result.output
    assert "32x32x10" in result.output and "760" in result.output and "76 per filter" in result.output
    result = invoke("arch", "conv-calc", "--input", "7x7x1", "--kernel", "3", "--stride", "3")
    assert result.exit_code == 2 and "does not fit" in result.output and "Traceback" not in result.output
    result = invoke("arch", "conv-calc", "--stack", "conv3,conv3,conv3")
    assert result.exit_code == 0 and "receptive field of the stack: 7x7" in result.output
    result = invoke("arch", "conv-calc", "--kernel", "3", "--dilation", "2")
    assert result.exit_code == 0 and "= 5" in result.output


@pytest.mark.parametrize("args, ignored, use", [
    (("--input", "32x32x3", "--pool", "--kernel", "2", "--filters", "4"), "--filters does", "a pooling layer"),
    (("--input", "32x32x3", "--pool", "--kernel", "3", "--dilation", "2"), "--dilation does", "a pooling layer"),
    (("--input", "8x8x1", "--pool", "--kernel", "2", "--filters", "0"), "--filters does", "a pooling layer"),
    (("--stack", "conv3,conv3", "--filters", "8", "--pad", "1"), "--filters, --pad do", "--stack"),
    (("--kernel", "3", "--stride", "2", "--pool"), "--stride, --pool do", "without --input"),
])
def test_conv_calc_refuses_an_option_that_does_nothing_for_the_layer(args, ignored, use):
    """Before, `--pool --filters 4` printed the pooling layer as if --filters had not been typed (exit 0)."""
    result = invoke("arch", "conv-calc", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"error: {ignored} nothing for" in result.output and use in result.output
    assert len(result.output.strip().splitlines()) == 1
    fine = invoke("arch", "conv-calc", "--input", "32x32x3", "--pool", "--kernel", "2", "--pad", "0", "--dilation", "1")
    assert fine.exit_code == 0 and "16x16x3" in fine.output  # an option at its default asks for nothing
    assert calc.conv_calc_use({"input": "8x8x3", "kernel": 3, "filters": 2, "dilation": 2, "pool": False}) == "conv"


def test_cli_list_and_errors():
    result = invoke("arch", "list")
    assert result.exit_code == 0
    for spec in list_archs():
        assert spec.name in result.output
    result = invoke("arch", "summary", "alexnet", "--input", "32x32x3")
    assert result.exit_code == 2 and "at least 67x67" in result.output


# ------------------------------------------------------------------------------------------ digits export
def test_digits_export_writes_a_stratified_folder_dataset(tmp_path):
    from PIL import Image

    from tltool.dataset import load_folder
    from tltool.digits import export_digits
    from tltool.outputs import mark_output_dir

    out = tmp_path / "digits"
    (tmp_path / ".digits.partial" / "train").mkdir(parents=True)  # left by an interrupted run: tltool marks its
    mark_output_dir(tmp_path / ".digits.partial", "digits")  # staging folders when it makes them
    result = invoke("data", "digits", str(out))
    assert result.exit_code == 0, result.output
    files = sorted(out.rglob("*.png"))
    assert len(files) == 1797
    assert sorted(p.name for p in (out / "train").iterdir()) == [str(d) for d in range(10)]
    assert sorted(p.name for p in (out / "val").iterdir()) == [str(d) for d in range(10)]
    assert not (tmp_path / ".digits.partial").exists()
    with Image.open(files[0]) as im:
        assert im.size == (32, 32)
    dataset = load_folder(str(out))
    counts = dataset.counts()
    for digit in map(str, range(10)):
        n = counts["train"][digit] + counts["val"][digit]
        assert abs(counts["val"][digit] - 0.2 * n) <= 1  # stratified
    names = {Path(r.path).name for r in dataset.records}
    assert len(names) == 1797  # each load_digits() image once

    with pytest.raises(TltoolError, match="--force"):
        export_digits(out)
    again = export_digits(out, force=True, size=40)
    assert again == {s: {d: counts[s][d] for d in counts[s]} for s in ("train", "val")}  # same seed, same split
    with Image.open(next(out.rglob("*.png"))) as im:
        assert im.size == (40, 40)


def test_the_names_a_recipe_check_knows_are_those_the_builders_register():
    """`tltool run --check` looks net names up without importing the builders (TensorFlow, ~9 s): its table must be
    the registry's, and it refuses what get_arch refuses, with the same words."""
    from tltool.arch.registry import ARCH_NAMES, check_arch_name

    assert ARCH_NAMES == {spec.name: spec.aliases for spec in list_archs()}
    for name in ("VGG-16", "ResNet18", "lenet"):
        check_arch_name(name)
        get_arch(name)
    with pytest.raises(TltoolError) as unknown:
        check_arch_name("lenet6")
    with pytest.raises(TltoolError) as by_registry:
        get_arch("lenet6")
    assert str(unknown.value) == str(by_registry.value)
    # and a recipe's check of a train step imports no TensorFlow
    code = ("import sys\nfrom tltool.cli.recipes import _validate_configs\n"
            "_validate_configs('arch-summary', {'name': 'vgg16'})\nprint('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120).stdout.strip() == "False"
