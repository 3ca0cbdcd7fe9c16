"""Celery: the app (one configuration class), thin tasks over the job stages, the embedded worker.

The package is named after the library it wraps; absolute imports keep ``import celery`` inside
it pointing at the library.
"""
