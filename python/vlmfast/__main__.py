"""``python -m vlmfast`` runs the command-line interface."""

from vlmfast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
