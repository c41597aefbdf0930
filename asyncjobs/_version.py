"""The version of asyncjobs, written once: the package, the runtime bundle and the wheel read it."""

__version__ = "0.1.0"
