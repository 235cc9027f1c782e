"""The ``mindsearch`` command line (click). Sub-commands load lazily; see ``cli.main``."""
