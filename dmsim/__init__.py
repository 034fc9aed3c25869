"""dmsim: replay kernel memory traces against a simulated x86-64 direct map."""

__version__ = "0.1.0"
