"""`python -m serving`: see serving/cli.py."""

from serving.cli import main

raise SystemExit(main())
