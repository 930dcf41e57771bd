"""Retraining triggers: decide from data, drift, quality and age whether a pipeline should run again.

Run as: tuneline trigger check pipelines/finetune.yaml [--run] [--json]

Modules (one job each):
  result     the typed outcome of one trigger and of a whole check
  features   cheap per-prompt features (length, words, digit share, non-ASCII share) and prompt readers
  drift      population stability index and Kolmogorov-Smirnov statistic, per feature
  newdata    records added to the dataset since the last successful run
  champion   the registered champion model version in MLflow: age and registered metric
  quality    re-evaluate the champion on fresh labelled data with the evaluate component's metric code
  ratings    the champion's win rate over rated traffic, with its 95% interval
  check      run the configured triggers and combine them into a decision
  tracking   record a decision in MLflow (experiment ``tuneline-triggers``)

The Azure ML job and schedule that run the check on a cron are that target's: tuneline.targets.azureml.retrain.
"""

from .check import CheckOptions, run_check
from .result import Decision, TriggerResult

__all__ = ["CheckOptions", "Decision", "TriggerResult", "run_check"]
