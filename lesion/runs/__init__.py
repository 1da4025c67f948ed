"""Running experiments: the Trainer door, loggers, W&B dashboards, sweep summaries, Hydra glue."""
