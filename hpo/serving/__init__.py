"""Serving a study's best model: its preprocessing, the REST app, and ``hpo serve``."""
