"""Subcommands of the ``medfusion`` command line (one module each; see :mod:`MedFusionLib.cli`)."""
