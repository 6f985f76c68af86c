"""Feature angles, student-teacher representation consistency, UMAP maps and an interactive explorer.

* `metrics`: feature angles (EdgeVL), margin angles (to the label's text minus to the nearest other class
  text), their summaries and claims (`ANGLE_CLAIMS`, `MARGIN_CLAIMS`, `claim_rows`), M_rel / M_neigh (after Li et al., ICCV 2023),
  `RepresentationScores`, `representation_scores`, `analysis_metrics` (notebook 04's metrics.json block).
* `store`: the safetensors embedding cache under `utils.cache_dir() / "analysis"` (`save_embeddings`,
  `load_embeddings`, `cached_embeddings`).
* `umap_map`: one shared, seeded, cached UMAP map of several embedding sets (`umap_sets`, `umap_coordinates`).
* `figures`: the matplotlib figures and the ipywidgets explorer (`feature_explorer`; a static figure headless).

Every name is importable from `edgevl_lib.analysis`. Heavy imports (umap, matplotlib, ipywidgets, scipy,
safetensors) happen inside the functions that need them.

>>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); u = torch.eye(2)
>>> feature_angles(v, torch.tensor([0, 0, -1]), u)
tensor([ 0., 90., nan])
"""
from __future__ import annotations

from .figures import (MODALITY_COLOURS, UNKNOWN_COLOUR, VARIANT_COLOURS, FeatureExplorer, _class_colours, _draw_map,
                      _map_inputs, _variant_colour, angle_distribution_figure, feature_explorer, has_widget_frontend,
                      representation_figure, umap_figure)
from .metrics import (ANGLE_CLAIMS, MARGIN, MARGIN_CLAIMS, MODALITIES, VARIANTS, ArrayLike, RepresentationScores,
                      _angle_inputs, _angle_stats, _knn, _labels, _matrix, _paired, _pearson, analysis_metrics,
                      angle_summary, claim_rows, feature_angles, m_neigh, m_neigh_chance, m_rel, margin_angles,
                      representation_scores, variant_angles, variant_margin_angles)
from .store import (_cache_file, _flatten, _unflatten, analysis_cache_dir, cached_embeddings, load_embeddings,
                    save_embeddings)
from .umap_map import TEXT_SET, _read_umap_cache, _umap_key, exact_cosine_knn, set_name, umap_coordinates, umap_sets

__all__ = [
    # metrics
    "ANGLE_CLAIMS", "MARGIN", "MARGIN_CLAIMS",
    "MODALITIES", "VARIANTS", "ArrayLike", "RepresentationScores", "analysis_metrics", "angle_summary",
    "claim_rows", "feature_angles", "m_neigh", "m_neigh_chance", "m_rel", "margin_angles", "representation_scores",
    "variant_angles", "variant_margin_angles",
    # store
    "analysis_cache_dir", "cached_embeddings", "load_embeddings", "save_embeddings",
    # umap_map
    "TEXT_SET", "exact_cosine_knn", "set_name", "umap_coordinates", "umap_sets",
    # figures
    "MODALITY_COLOURS", "UNKNOWN_COLOUR", "VARIANT_COLOURS", "FeatureExplorer", "angle_distribution_figure",
    "feature_explorer", "has_widget_frontend", "representation_figure", "umap_figure",
    # private helpers of the former single module, still importable from here
    "_angle_inputs", "_angle_stats", "_knn", "_labels", "_matrix", "_paired", "_pearson", "_cache_file", "_flatten", "_unflatten",
    "_read_umap_cache", "_umap_key", "_class_colours", "_draw_map", "_map_inputs", "_variant_colour",
]
