"""Policies: what the simulated kernel does differently from Linux 6.1.

A Policy is one allocation policy and one merge policy with their parameters
(docs/design-policies.md). The core takes it as plain numbers (`alloc_code`,
`merge_code`, `unmapped_mask`); loading and composing YAML files lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .trace.events import UNMAPPED_GROUPS

ALLOC_POLICIES = ("baseline", "migrate_unmapped", "unmapped_alloc")
MERGE_POLICIES = ("none", "cpa_merge", "rox_collapse")


@dataclass(frozen=True)
class Policy:
    name: str = "baseline"
    alloc: str = "baseline"  # one of ALLOC_POLICIES
    merge: str = "none"  # one of MERGE_POLICIES
    # migrate_unmapped: the prototype's disabled FIXME in __free_one_page()
    collapse_free_pageblock: bool = False
    # groups whose allocations ask for __GFP_UNMAPPED (events.UNMAPPED_GROUPS)
    unmapped_users: tuple[str, ...] = ("secretmem", "module", "bpf")
    description: str = ""
    source: str = ""
    params: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def alloc_code(self) -> int:
        return ALLOC_POLICIES.index(self.alloc)

    @property
    def merge_code(self) -> int:
        return MERGE_POLICIES.index(self.merge)

    @property
    def unmapped_mask(self) -> int:
        """Bit (1 << group) for each group that asks for __GFP_UNMAPPED; 0 under baseline."""
        if self.alloc == "baseline":
            return 0
        mask = 0
        for g in self.unmapped_users:
            mask |= 1 << UNMAPPED_GROUPS[g]
        return mask


BASELINE = Policy()
