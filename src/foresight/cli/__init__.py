"""The ``foresight`` command line."""
