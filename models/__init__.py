"""soundwarden models: the light core shared by edge and cloud (audio, front end, bundles,
datasets); training, evaluation and export arrive behind the `train` extra."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("soundwarden")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
