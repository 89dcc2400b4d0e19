"""The ``zoo`` command (LightningCLI): one Trainer method per command, argv conventions, help."""
from zoo.cli.main import main

__all__ = ["main"]
