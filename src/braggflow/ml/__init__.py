"""Machine learning on the overlay shards: data streaming, models, training, baselines, metrics, model cards.

Only ``models`` and ``train`` import PyTorch; data, metrics and baselines work without it.
"""
