"""Training, export and quantization: the heavy half of `models`, behind the `train` extra.

`data` and `recipes` are numpy-only; `nets`, `trainer` and `export` import torch.
"""
