"""HyperPlace: the in-guest placement agent of HyperTier.

It samples memory accesses (perf: PEBS/IBS where present, software fallbacks
otherwise), classifies hotness over ranges of guest virtual address space and
exchanges hot slow pages with cold fast pages via move_pages(2).
"""

__all__: list[str] = []
