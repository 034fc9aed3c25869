"""Exact /proc text for the simulated counters."""

from __future__ import annotations

from ..simulate import counter_value


def vmstat_text(counters, policy=None) -> str:
    """The direct_map_* lines of /proc/vmstat (mm/vmstat.c: "%s %lu\\n") of the
    kernel the policy models: the cpa merge series adds
    direct_map_level1/2_merges, 6.15 adds direct_map_level2/3_collapses (which
    dmsim also counts for the migrate_unmapped collapse variant)."""
    names = ["direct_map_level2_splits", "direct_map_level3_splits"]
    if policy is not None and policy.merge == "cpa_merge":
        names += ["direct_map_level1_merges", "direct_map_level2_merges"]
    if policy is not None and (policy.merge == "rox_collapse" or policy.collapse_free_pageblock):
        names += ["direct_map_level2_collapses", "direct_map_level3_collapses"]
    return "".join(f"{name} {counter_value(counters, name)}\n" for name in names)


def meminfo_text(counters, gbpages: bool) -> str:
    """arch_report_meminfo() (arch/x86/mm/pat/set_memory.c): DirectMap1G only
    when direct_gbpages is set."""
    out = f"DirectMap4k:    {counter_value(counters, 'DirectMap4k'):8d} kB\n"
    out += f"DirectMap2M:    {counter_value(counters, 'DirectMap2M'):8d} kB\n"
    if gbpages:
        out += f"DirectMap1G:    {counter_value(counters, 'DirectMap1G'):8d} kB\n"
    return out
