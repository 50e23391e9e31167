"""See inside a network and a dataset: filters, activation maps, Grad-CAM, a map of the features.

Every ``visualize_*`` function writes PNG and JSON into a run folder; the pieces they are made of (``filter_grid``,
``layer_activations``, ``grad_cam``, ``embed``) return arrays for tests and other reports. Suspect labels live
beside the labeler (:mod:`tltool.labeler.suspects`). Importing this package does not import TensorFlow.
"""
from __future__ import annotations

from .embedding import Embedding, embed, visualize_embedding
from .filters import (ActivationGrid, FilterGrid, filter_grid, layer_activations, layer_table, visualize_activations,
                      visualize_filters)
from .gradcam import GradCam, grad_cam, gradcam_overlays, gradcam_paths, visualize_gradcam
from .network import Network, classifier_network, open_backbone, open_network, open_run

__all__ = ["ActivationGrid", "Embedding", "FilterGrid", "GradCam", "Network",
           "classifier_network", "embed", "filter_grid", "grad_cam", "gradcam_overlays",
           "gradcam_paths", "layer_activations", "layer_table", "open_backbone", "open_network", "open_run",
           "visualize_activations", "visualize_embedding", "visualize_filters",
           "visualize_gradcam"]
