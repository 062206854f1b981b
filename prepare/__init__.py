"""Data preparation: one script per data set (python prepare/<name>.py), the token-file
format, metadata and codecs they write and train.py and sample.py read (tokens.py), and the
fetching of source texts (download.py)."""
