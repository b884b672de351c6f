"""hpo: hyperparameter optimization for PyTorch classifiers, from a YAML study file.

Optuna searches, plain PyTorch trains, MLflow records. Imports here stay light so that
``hpo --help`` starts fast: heavy modules (torch, optuna, mlflow) load where they are used.
"""

__version__ = "0.1.0"
