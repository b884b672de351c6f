"""Training: device selection, optimizers, the plain PyTorch loop and evaluation metrics.

Nothing here imports Optuna or MLflow; they hook in through :mod:`hpo.training.callbacks`.
"""
