"""gkd-tune: Gompertz-curve dynamic knowledge distillation, tuned with Ray Tune, Optuna and MLflow.

    core/      the method in plain PyTorch (no Ray, MLflow or Optuna)
    sweep/     a sweep inside Ray Tune: space file, storage, search and early stopping, tracking, trainable, report
    cluster/   where it runs: which Ray, the checks before a sweep, the doctor
    engine.py  the run engine under search and reproduce
    the commands, each `python -m gkd_tune.<name>`: search, reproduce, train, report, doctor, data, teacher
"""
