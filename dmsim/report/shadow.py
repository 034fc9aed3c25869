"""--placement shadow: how often the simulated allocator picks the kernel's block.

Scores the decisions core/shadow.py logged: overall and broken down by order,
migratetype, gfp zone, kind (alloc_pages() or a vmalloc page) and recorder step,
plus the model's state at the first divergences. Fractions, not percentages, so
a CI gate can compare them with a threshold.
"""

from __future__ import annotations

import numpy as np

from ..core.buddy import PAGEBLOCK_ORDER
from ..core.shadow import (
    AT_ALLOCATED,
    AT_BUDDY,
    AT_NOWHERE,
    AT_PCP,
    AT_RESERVED,
    D_BLOCK,
    D_BLOCK_MT,
    D_BLOCK_ORDER,
    D_EVENT,
    D_INFO,
    D_LEN,
    D_POS,
    D_PRED,
    D_PRED_LIST_LEN,
    D_PRED_PB_MT,
    D_REC,
    D_REC_PB_MT,
    D_WHERE,
    OUT_HIT,
    OUT_LOST,
    OUT_MODEL_OOM,
    OUT_MOVED,
    OUT_NOT_FREE,
    SRC_PCP,
)
from ..trace.events import EV_CHECKPOINT
from .buddy import UNMAPPED_TYPES

ZONE_NAMES = ("DMA", "DMA32", "Normal")
# the simulator's migratetype index -> /proc/pagetypeinfo's name
MIGRATETYPE_NAMES = {i: name for name, i in UNMAPPED_TYPES if i is not None}
OUTCOMES = {OUT_HIT: "hit", OUT_MOVED: "moved", OUT_NOT_FREE: "not_free_in_model",
            OUT_MODEL_OOM: "model_oom", OUT_LOST: "lost"}
WHERE = {AT_PCP: "pcp list", AT_BUDDY: "buddy free list", AT_ALLOCATED: "allocated",
         AT_RESERVED: "reserved", AT_NOWHERE: "outside every zone"}
PAGEBLOCK_1G = 18  # pfn >> 18: the 1G region


def _scores(rec: np.ndarray, pred: np.ndarray, order: np.ndarray) -> dict:
    n = int(rec.shape[0])
    if n == 0:
        return {"decisions": 0, "same_pfn": None, "same_pageblock": None, "same_2m": None,
                "same_1g": None}
    ok = pred >= 0
    shift_2m = np.maximum(order, PAGEBLOCK_ORDER)  # every 2M region the block covers
    return {
        "decisions": n,
        "same_pfn": round(float(np.mean(ok & (pred == rec))), 4),
        "same_pageblock": round(float(np.mean(ok & ((pred >> PAGEBLOCK_ORDER)
                                                    == (rec >> PAGEBLOCK_ORDER)))), 4),
        "same_2m": round(float(np.mean(ok & ((pred >> shift_2m) == (rec >> shift_2m)))), 4),
        "same_1g": round(float(np.mean(ok & ((pred >> PAGEBLOCK_1G) == (rec >> PAGEBLOCK_1G)))),
                         4),
    }


def _steps(trace, ev_index: np.ndarray) -> np.ndarray:
    """The recorder step each event ran in: that of the next checkpoint (the
    recorder writes a step's checkpoint after its command); 'end' after the last."""
    ev = trace.events
    at = np.nonzero(ev.kind == EV_CHECKPOINT)[0]
    names = [trace.checkpoints[int(ev.arg0[j])].step
             if int(ev.arg0[j]) < len(trace.checkpoints) else "?" for j in at]
    names.append("end")
    return np.array(names, dtype=object)[np.searchsorted(at, ev_index)]


def shadow_report(r, max_divergences: int = 10) -> dict:
    """The shadow section of a result (simulate.Replayed from simulate.shadow())."""
    _, d_ev, d_rec, d_pred, d_info, d_n, diag = r.shadow
    n = int(d_n[0])
    ev_i, rec, pred, info = d_ev[:n], d_rec[:n], d_pred[:n], d_info[:n]
    order = info & 15
    mt = (info >> 4) & 15
    zone = (info >> 8) & 15
    outcome = (info >> 12) & 15
    vmalloc = (info >> 20) & 1
    out = _scores(rec, pred, order)
    out["outcomes"] = {name: int(np.sum(outcome == code)) for code, name in OUTCOMES.items()}

    def by(keys: np.ndarray, label) -> dict:
        return {label(k): _scores(rec[keys == k], pred[keys == k], order[keys == k])
                for k in sorted(set(keys.tolist()))}

    out["by_order"] = by(order, str)
    out["by_migratetype"] = by(mt, lambda k: MIGRATETYPE_NAMES[k])
    out["by_zone"] = by(zone, lambda k: ZONE_NAMES[k])
    out["by_kind"] = by(vmalloc, lambda k: "vmalloc" if k else "alloc_pages")
    steps = _steps(r.trace, ev_i)
    seen: list[str] = []
    for s in steps.tolist():  # in trace order
        if s not in seen:
            seen.append(s)
    out["by_step"] = {s: _scores(rec[steps == s], pred[steps == s], order[steps == s])
                      for s in seen}
    lines = r.trace.lines
    divs = []
    for row in diag:
        if row[D_EVENT] < 0 or len(divs) >= max_divergences:
            break
        i = int(row[D_EVENT])
        inf = int(row[D_INFO])
        divs.append({
            "event": i,
            "line": int(lines[i]) if lines is not None and i < len(lines) else None,
            "order": inf & 15,
            "migratetype": MIGRATETYPE_NAMES[(inf >> 4) & 15],
            "zone": ZONE_NAMES[(inf >> 8) & 15],
            "vmalloc": bool((inf >> 20) & 1),
            "kernel_pfn": int(row[D_REC]),
            "model_pfn": int(row[D_PRED]),
            "model_source": "pcp" if (inf >> 16) & 15 == SRC_PCP else "buddy",
            "model_pcp_list_len": int(row[D_PRED_LIST_LEN]),
            "model_pfn_pageblock_mt": _mt(row[D_PRED_PB_MT]),
            "kernel_pfn_in_model": WHERE.get(int(row[D_WHERE]), "?"),
            "kernel_pfn_pageblock_mt": _mt(row[D_REC_PB_MT]),
            "kernel_block": {"head": int(row[D_BLOCK]), "order": int(row[D_BLOCK_ORDER]),
                             "migratetype": _mt(row[D_BLOCK_MT]),
                             "position": int(row[D_POS]), "list_len": int(row[D_LEN])}
            if row[D_BLOCK] >= 0 else None,
            "outcome": OUTCOMES[(inf >> 12) & 15],
        })
    out["first_divergences"] = divs
    return out


def _mt(v) -> str | None:
    v = int(v)
    return MIGRATETYPE_NAMES.get(v)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def shadow_text(rep: dict) -> str:
    """A plain-text rendering: one table of fractions per breakdown, then the divergences."""
    out = ["# shadow placement: the simulated 6.1 allocator's guess against the kernel's "
           "choice, per allocation",
           "# outcomes: " + ", ".join(f"{k} {v}" for k, v in rep["outcomes"].items())]
    header = f"{'':<28} {'decisions':>9} {'same_pfn':>9} {'same_pb':>9} {'same_2m':>9} " \
             f"{'same_1g':>9}"

    def row(name, s):
        return f"{name:<28} {s['decisions']:>9} {_fmt(s['same_pfn']):>9} " \
               f"{_fmt(s['same_pageblock']):>9} {_fmt(s['same_2m']):>9} {_fmt(s['same_1g']):>9}"

    out += [header, row("all", rep)]
    for key, title in (("by_kind", "kind"), ("by_order", "order"),
                       ("by_migratetype", "migratetype"), ("by_zone", "zone"),
                       ("by_step", "step")):
        out.append(f"{title}:")
        out += [row("  " + str(k)[:26], s) for k, s in rep[key].items()]
    if rep["first_divergences"]:
        out.append("first divergences:")
    for d in rep["first_divergences"]:
        where = d["kernel_pfn_in_model"]
        blk = d["kernel_block"]
        if blk:
            where += (f" (block {blk['head']:#x} order {blk['order']} {blk['migratetype']}, "
                      f"{blk['position']} of {blk['list_len']} from the head)")
        at = f"line {d['line']}" if d["line"] else f"event {d['event']}"
        model = f"{d['model_pfn']:#x}" if d["model_pfn"] >= 0 else "none"
        src = d["model_source"]
        if src == "pcp" and d["model_pcp_list_len"] >= 0:
            src += f", {d['model_pcp_list_len']} left on the list"
        out.append(f"  {at}: order {d['order']} {d['migratetype']} {d['zone']}"
                   f"{' vmalloc' if d['vmalloc'] else ''}: kernel {d['kernel_pfn']:#x} "
                   f"[{d['kernel_pfn_pageblock_mt']}], model {model} "
                   f"[{d['model_pfn_pageblock_mt']}] from {src}; the kernel's block was "
                   f"{where}: {d['outcome']}")
    return "\n".join(out) + "\n"
