"""Budgeted pretraining: schedule, optimizer, batches, checkpoints, distributed engines, metrics, the loop."""
