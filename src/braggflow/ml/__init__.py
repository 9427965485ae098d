"""Machine learning on the overlay shards, by task: ``peak_finder``, ``hit_classifier`` and ``energy_distance``
(each model's training, tuning and scores, and the conventional baseline it is measured against), on ``fit``
(the shared training loop), ``models`` and ``layers``; ``data`` (frames, tiles, splits), ``baselines``,
``metrics``, ``cards`` (model cards), ``predict`` (models on experimental frames), ``pipeline`` (what the
workflow's jobs call), ``determinism`` (the same bytes on any thread count). Figures: ``braggflow.figures.training``.

PyTorch is imported by ``fit``, ``layers``, ``models`` and the three task modules; data, metrics and baselines work
without it.
"""
