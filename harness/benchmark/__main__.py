"""`python -m harness.benchmark [flags]`: see the package's docstring (harness/benchmark/__init__.py)."""

from harness.benchmark.command import main

raise SystemExit(main())
