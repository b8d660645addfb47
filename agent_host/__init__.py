"""HyperFlex: the host agent of HyperTier.

It provisions each VM's fast and slow memory (one resizable virtio-mem allotment
per guest NUMA node) through libvirt, with QoS classes and elastic rebalancing.
It never scans guest memory.
"""

__all__: list[str] = []
