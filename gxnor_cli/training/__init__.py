"""Training: one run, on one process or N data-parallel ranks.

    launch.py     train(cfg): in this process, or N ranks that each run run.train_run
    run.py        one tracked run in one process: resume, data, model, MLflow, artifacts
    loop.py       the plain loop (Trainer): DST for discrete weights, Adam for BatchNorm
    group.py      the processes of a run: Solo (one) or Ranks (torch.distributed)
    allocator.py  keep the memory a CPU step frees for the next step (glibc's malloc)

Import from the modules (this file imports nothing, so a light module of the package
loads without the heavy ones).
"""
