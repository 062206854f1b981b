"""What the scripts (train.py, sample.py, explain.py, export.py, plot.py, prepare/, benchmarks/)
share, one concern a module. The model itself is model.py, which imports nothing of ours."""
