"""``python -m edge_agent`` is ``edgeloop-agent``."""

from edge_agent.cli import main

raise SystemExit(main())
