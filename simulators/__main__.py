"""``python -m simulators`` is ``edgeloop-sim``."""

from simulators.cli import main

raise SystemExit(main())
