"""MLflow tracking of studies: parent/child runs (runs.py), trial figures (plots.py), logged models (models.py).

Nothing is imported here: ``mlflow`` takes seconds to import, so each module imports it only where used.
"""
