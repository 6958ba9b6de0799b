"""The method in plain PyTorch: data, models, schedules, losses, Sinkhorn, distillers, the training loop, teachers.
Importable, and runnable, without Ray, MLflow or Optuna (tests/test_layers.py checks it)."""
