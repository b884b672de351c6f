"""MLflow tracking of studies: parent/child runs (runs.py), trial figures (plots.py, drawn as SVG by svg.py),
logged models (models.py), the spool and sender of trial runs (spool.py, finisher.py, outage.py).

Nothing is imported here: ``mlflow`` takes seconds to import, so each module imports it only where used.
"""
