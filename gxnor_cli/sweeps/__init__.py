"""Sweeps: a grid of configs trained as nested MLflow runs, by a launcher of your choice.

    grid.py        Hydra sweep syntax -> validated points; a sweep's identity
    sweep.py       the parent run, skip / resume / wait on rerun, results
    trial.py       one point trained as a child run
    launchers/     local, submitit_local, slurm, ray: where and how trials run
    report.py      the results table, CSV, Pareto front and plots

Import from the modules (this file imports nothing, so a light module of the package
loads without the heavy ones).
"""
