"""keras.applications architectures in the registry, each with the preprocessing it was trained with.

A mismatch costs accuracy silently, so the mode is part of the entry: VGG and ResNet v1 want ``caffe`` (BGR, mean
subtracted), MobileNet v1/v2, Inception, Xception, ResNet v2 and NASNet want ``tf`` ([-1, 1]), DenseNet wants
``torch``; EfficientNet, EfficientNetV2, ConvNeXt and MobileNetV3 rescale inside the model (``none``).
"""
from __future__ import annotations

from .registry import BackboneSpec, register_backbone


def _keras_builder(constructor_name: str):
    def build(input_shape, weights):
        from .._tf import keras  # on first use: registering must not cost a cached command TensorFlow's start-up

        constructor = getattr(keras.applications, constructor_name)
        return constructor(include_top=False, weights=weights, input_shape=input_shape)

    build.__name__ = f"build_{constructor_name}"
    return build


def _mobilenet_v3_builder(constructor_name: str):
    def build(input_shape, weights):
        from .._tf import keras

        constructor = getattr(keras.applications, constructor_name)
        return constructor(include_top=False, weights=weights, input_shape=input_shape, include_preprocessing=True)

    return build


def _notop(stem: str) -> str:
    return f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5"


# name, keras constructor, family, preprocess, default size, min size, weights file
_TABLE = [
    ("vgg16", "VGG16", "vgg", "caffe", 224, 32, _notop("vgg16")),
    ("vgg19", "VGG19", "vgg", "caffe", 224, 32, _notop("vgg19")),
    ("resnet50", "ResNet50", "resnet", "caffe", 224, 32, _notop("resnet50")),
    ("resnet101", "ResNet101", "resnet", "caffe", 224, 32, _notop("resnet101")),
    ("resnet152", "ResNet152", "resnet", "caffe", 224, 32, _notop("resnet152")),
    ("resnet50_v2", "ResNet50V2", "resnet_v2", "tf", 224, 32, _notop("resnet50v2")),
    ("resnet101_v2", "ResNet101V2", "resnet_v2", "tf", 224, 32, _notop("resnet101v2")),
    ("resnet152_v2", "ResNet152V2", "resnet_v2", "tf", 224, 32, _notop("resnet152v2")),
    ("inception_v3", "InceptionV3", "inception", "tf", 299, 75, _notop("inception_v3")),
    ("inception_resnet_v2", "InceptionResNetV2", "inception", "tf", 299, 75, _notop("inception_resnet_v2")),
    ("xception", "Xception", "xception", "tf", 299, 71, _notop("xception")),
    ("mobilenet", "MobileNet", "mobilenet", "tf", 224, 32, "mobilenet_1_0_224_tf_no_top.h5"),
    ("mobilenet_v2", "MobileNetV2", "mobilenet", "tf", 224, 32,
     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    ("densenet121", "DenseNet121", "densenet", "torch", 224, 32, _notop("densenet121")),
    ("densenet169", "DenseNet169", "densenet", "torch", 224, 32, _notop("densenet169")),
    ("densenet201", "DenseNet201", "densenet", "torch", 224, 32, _notop("densenet201")),
    ("nasnet_mobile", "NASNetMobile", "nasnet", "tf", 224, 32, "nasnet_mobile_no_top.h5"),
]
_EFFICIENTNET_SIZES = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
_EFFICIENTNET_V2 = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "s": 384, "m": 480, "l": 480}
_CONVNEXT = {"tiny": "ConvNeXtTiny", "small": "ConvNeXtSmall", "base": "ConvNeXtBase", "large": "ConvNeXtLarge",
             "xlarge": "ConvNeXtXLarge"}

for _name, _ctor, _family, _mode, _size, _min, _file in _TABLE:
    register_backbone(BackboneSpec(name=_name, family=_family, build=_keras_builder(_ctor), preprocess=_mode,
                                   default_size=_size, min_size=_min, weights_file=_file))

for _i, _size in _EFFICIENTNET_SIZES.items():
    register_backbone(BackboneSpec(
        name=f"efficientnet_b{_i}", family="efficientnet", build=_keras_builder(f"EfficientNetB{_i}"),
        preprocess="none", default_size=_size, weights_file=f"efficientnetb{_i}_notop.h5", aliases=(f"efficientnetb{_i}",)))

for _variant, _size in _EFFICIENTNET_V2.items():
    register_backbone(BackboneSpec(
        name=f"efficientnet_v2_{_variant}", family="efficientnet_v2",
        build=_keras_builder(f"EfficientNetV2{_variant.upper()}"), preprocess="none", default_size=_size,
        weights_file=f"efficientnetv2-{_variant}_notop.h5", aliases=(f"efficientnetv2{_variant}",)))

for _variant, _ctor in _CONVNEXT.items():
    register_backbone(BackboneSpec(
        name=f"convnext_{_variant}", family="convnext", build=_keras_builder(_ctor),
        preprocess="none", default_size=224, weights_file=f"convnext_{_variant}_notop.h5"))

for _variant in ("small", "large"):
    register_backbone(BackboneSpec(
        name=f"mobilenet_v3_{_variant}", family="mobilenet",
        build=_mobilenet_v3_builder(f"MobileNetV3{_variant.capitalize()}"), preprocess="none", default_size=224,
        weights_file=f"weights_mobilenet_v3_{_variant}_224_1.0_float_no_top_v2.h5"))
