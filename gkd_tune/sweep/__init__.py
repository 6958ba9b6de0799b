"""A sweep inside Ray Tune: its space file and storage, Optuna and ASHA, MLflow tracking, the trainable, the
report. Built on gkd_tune.core."""
