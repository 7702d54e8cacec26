"""``python -m cairn``: the ``cairn`` command."""

from cairn.cli.main import main

if __name__ == "__main__":
    main()
