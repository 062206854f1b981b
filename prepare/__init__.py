"""Data preparation: one script per data set (python prepare/<name>.py) and the shared
module they, train.py and sample.py import (prepare/common.py)."""
