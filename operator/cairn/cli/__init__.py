"""The ``cairn`` command: inspect and compare runs, run training locally, run the agent."""
