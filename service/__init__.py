"""rtinjury service: REST API, DICOM node and command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rtinjury")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
