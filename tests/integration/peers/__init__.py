"""HyperTier beside real tiering peers on a Debian 13 guest (kernel 6.12), issue 12.

``python -m tests.integration.peers --help``: builds (and caches) the trixie guest
image, memtierd and the guest programs, boots a VM whose node 1 is CPU-less and
slower in the ACPI HMAT, and runs every peer (first touch, the kernel's own
tiering, DAMON through damo, memtierd, HyperTier) on every workload. The
guest-side programs and measurements are described in README.md beside this file.
"""
