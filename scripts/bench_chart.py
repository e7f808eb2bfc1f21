"""Charts for the benchmark scripts, from the small JSON file each script writes next to its table.

    python bench_chart.py lfs|local|swarm DATA.json OUT.svg

lfs:   {"title", "scenarios": [{"name", "seconds", "ratio", "goal"}]}   goal: ratio to direct, or null
local: {"title", "groups": [{"name", "unit", "goal", "bars": [{"name", "value"}]}]}
swarm: {"title", "p2p": [seconds per peer], "direct": [seconds per peer],
        "origin_bytes": {"p2p": x size, "direct": x size}, "ideal": seconds or null}
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SHOAL = "#2a7ab0"
BASE = "#b0b0b0"


def lfs(d, ax_fig):
    fig, ax = ax_fig(1)
    sc = d["scenarios"]
    names = [s["name"] for s in sc]
    secs = [s["seconds"] for s in sc]
    colors = [BASE if s["name"] in ("direct", "floor") else SHOAL for s in sc]
    bars = ax.bar(range(len(sc)), secs, color=colors)
    direct = secs[0] if secs else 0
    for i, (b, s) in enumerate(zip(bars, sc)):
        label = f"{s['seconds']:.2f} s\n{s['ratio']:.2f}×"
        ax.annotate(label, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=9)
        if s.get("goal") is not None and direct:
            y = s["goal"] * direct
            ax.hlines(y, b.get_x() - 0.05, b.get_x() + b.get_width() + 0.05, colors="#c03030", linestyles="dashed")
            ax.annotate(f"goal ≤{s['goal']}×", (b.get_x() + b.get_width(), y), fontsize=7, color="#c03030",
                        ha="left", va="bottom")
    ax.set_xticks(range(len(sc)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("seconds (median)")
    ax.set_ylim(0, max(secs + [0.1]) * 1.25)
    return fig


def local(d, ax_fig):
    groups = d["groups"]
    fig, axes = ax_fig(len(groups))
    if len(groups) == 1:
        axes = [axes]
    for ax, g in zip(axes, groups):
        bars = g["bars"]
        vals = [b["value"] for b in bars]
        colors = [SHOAL if b["name"].lower().startswith("shoal") else BASE for b in bars]
        rects = ax.bar(range(len(bars)), vals, color=colors)
        for r, v in zip(rects, vals):
            ax.annotate(f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}", (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom",
                        fontsize=8)
        if g.get("goal") is not None:
            ax.axhline(g["goal"], color="#c03030", linestyle="dashed", linewidth=1)
            ax.annotate(g.get("goal_label", "goal"), (0, g["goal"]), fontsize=7, color="#c03030", va="bottom")
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([b["name"] for b in bars], fontsize=7, rotation=15)
        ax.set_title(g["name"], fontsize=9)
        ax.set_ylabel(g["unit"], fontsize=8)
        ax.set_ylim(0, max(vals + [g.get("goal") or 0, 1e-9]) * 1.25)
    return fig


def swarm(d, ax_fig):
    fig, (a1, a2) = ax_fig(2)
    p2p = sorted(d["p2p"])
    direct = sorted(d["direct"])
    a1.plot(range(1, len(p2p) + 1), p2p, "o-", color=SHOAL, label="Shoal P2P")
    a1.plot(range(1, len(direct) + 1), direct, "s-", color="#707070", label="direct from origin")
    if d.get("ideal"):
        a1.axhline(d["ideal"], color="#c03030", linestyle="dashed", linewidth=1, label="size / origin link rate")
    a1.set_ylim(bottom=0)
    a1.set_xlabel("peers, sorted by completion")
    a1.set_ylabel("seconds to complete")
    a1.set_title("per-peer completion time", fontsize=9)
    a1.legend(fontsize=8)
    ob = d["origin_bytes"]
    rects = a2.bar([0, 1], [ob["p2p"], ob["direct"]], color=[SHOAL, BASE])
    for r in rects:
        a2.annotate(f"{r.get_height():.2f}×", (r.get_x() + r.get_width() / 2, r.get_height()), ha="center",
                    va="bottom", fontsize=9)
    a2.set_xticks([0, 1])
    a2.set_xticklabels(["Shoal P2P", "direct"])
    a2.set_ylabel("origin bytes / object size")
    a2.set_title("origin egress", fontsize=9)
    return fig


def main():
    kind, data, out = sys.argv[1:4]
    with open(data) as f:
        d = json.load(f)

    def ax_fig(n):
        if n <= 3:
            return plt.subplots(1, n, figsize=(max(6, 4 * n), 4.2))
        rows = (n + 2) // 3
        fig, axes = plt.subplots(rows, 3, figsize=(12, 3.8 * rows))
        flat = list(axes.flat)
        for extra in flat[n:]:
            extra.set_visible(False)
        return fig, flat[:n]

    fig = {"lfs": lfs, "local": local, "swarm": swarm}[kind](d, ax_fig)
    fig.suptitle(d.get("title", ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main()
