"""``python -m agent_guest``: the hypertier-guest command."""

from agent_guest import cli

raise SystemExit(cli.main())
