"""Tracking: where runs live and what is recorded of them.

    store.py    Store: the tracking URI and the local runs directory (no mlflow)
    client.py   MLflow (the only module that imports it): runs that survive outages, stale
                runs reaped, search, the UI server
    locate.py   a run's checkpoint from a path, a run id or a prefix of one
    report.py   tables, plots and CSV of runs and sweeps

Import from the modules (this file imports nothing, so a light module of the package
loads without the heavy ones).
"""
