"""Training a reference CNN from scratch (LeNet-5, AlexNet, VGG, ...) with the fine-tuning machinery."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .arch import build_arch, get_arch
from .configs import ScratchConfig
from .distribute import resolve_strategy
from .supervised import (KerasTrainingRun, ModelPlan, TrainResult, check_chief_output, check_run_settings,
                         keeps_callers_global_state)
from .training import Stage


@keeps_callers_global_state
def train_from_scratch(config: ScratchConfig, out: str | Path | None = None, resume: str | Path | None = None,
                       force: bool = False) -> TrainResult:
    if resume:  # the run's own settings, on this session's devices
        config = replace(ScratchConfig.from_run(Path(resume)), strategy=config.strategy)
    check_chief_output(config.strategy, out, resume, force)
    check_run_settings(config)
    resolve_strategy(config.strategy)  # before any TF operation (the check below builds a model)
    spec = get_arch(config.arch)
    image_size = config.image_size or spec.default_input[0]

    def build(num_classes: int):
        return build_arch(spec.name, (image_size, image_size, 3), num_classes, config.initializer,
                          config.batch_norm, config.dropout)

    build(2)  # a bad --arch option fails now, not after the data is checked
    plan = ModelPlan(ScratchConfig.KIND, spec.name, image_size, build,
                     stages=[Stage("train", config.stage_options(config.epochs, config.lr))],
                     model_config={"arch": spec.name, "initializer": config.initializer,
                                   "batch_norm": config.batch_norm, "dropout": config.dropout})
    return KerasTrainingRun(config, plan).run(out, Path(resume) if resume else None, force)
