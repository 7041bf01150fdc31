"""tinyfaas_std: a single-host Function-as-a-Service server on the Python standard library and psutil."""

__version__ = "0.1.0"
