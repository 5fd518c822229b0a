"""Sweeps: a grid of config overrides x seeds, run locally or as a Slurm job array, and the report."""
