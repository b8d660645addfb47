"""Process plumbing shared by both agents: strict TOML loading, clock, error base, CLI
and control-socket skeleton, logging set-up, cpulist parsing, service-manager hooks.

Plumbing only: nothing here knows about tiers, samples or VMs. The agents import it so
that they behave alike; they still share no state or policy (docs/architecture.md).
"""

__all__ = ["VERSION"]

# The product's version: the package's (pyproject.toml reads it from here) and both
# agents' (--version, the wire hello, status).
VERSION = "0.1.0"
