"""``python -m agent_host``: the hypertier-host command."""

from agent_host import cli

raise SystemExit(cli.main())
