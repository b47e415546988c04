"""Deployments of the causalmeta flows: the table in :mod:`deploy.serve`, rendered both as a
single-machine ``serve(...)`` process and as ``deploy/prefect.yaml`` for work pools."""
