"""Random state a checkpoint does not carry: the seed generators of dropout (and of any Keras random layer).

A ``.keras`` file does not restore a ``SeedGenerator``'s state: a loaded model draws a new seed and starts its
counter at 0, so a resumed run would drop other units than the uninterrupted one. Their states are stored in
``state.json`` after every epoch and put back after a resume. Shuffling and augmentation need nothing here: their
seeds are functions of the run's seed and the epoch (tltool.supervised).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

SEED_STATE = "seed_generator_state"  # the name Keras gives every SeedGenerator's state variable


def _seed_variables(model) -> list:
    return [v for v in model.variables if v.name == SEED_STATE]


def seed_states(model: keras.Model) -> list[list[int]]:
    """The state of every seed generator of ``model``, in layer order."""
    return [[int(x) for x in v.numpy().ravel()] for v in _seed_variables(model)]


def restore_seed_states(model: keras.Model, states: list[list[int]]) -> None:
    """Put back what :func:`seed_states` returned for the same architecture."""
    variables = _seed_variables(model)
    if len(variables) != len(states):
        return  # a state.json of an older tltool (or another model): nothing to restore
    for variable, state in zip(variables, states):
        variable.assign([int(x) for x in state])
