"""See inside a network and a dataset: filters, activation maps, Grad-CAM, a map of the features, suspect labels.

Every ``visualize_*`` function writes PNG and JSON into a run folder; the pieces they are made of (``filter_grid``,
``layer_activations``, ``grad_cam``, ``embed``, ``suspect_scores``) return arrays for tests and other reports.
Importing this package does not import TensorFlow.
"""
from .embedding import Embedding, embed, visualize_embedding
from .filters import (ActivationGrid, FilterGrid, filter_grid, layer_activations, layer_table, visualize_activations,
                      visualize_filters)
from .gradcam import GradCam, grad_cam, gradcam_overlays, gradcam_paths, visualize_gradcam
from .network import Network, classifier_network, open_backbone, open_network, open_run
from .suspects import CSV_COLUMNS, Suspect, find_suspects, suspect_scores

__all__ = ["ActivationGrid", "CSV_COLUMNS", "Embedding", "FilterGrid", "GradCam", "Network", "Suspect",
           "classifier_network", "embed", "filter_grid", "find_suspects", "grad_cam", "gradcam_overlays",
           "gradcam_paths", "layer_activations", "layer_table", "open_backbone", "open_network", "open_run",
           "suspect_scores", "visualize_activations", "visualize_embedding", "visualize_filters",
           "visualize_gradcam"]
