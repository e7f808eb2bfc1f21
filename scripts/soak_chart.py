"""The soak's samples as one SVG, standard library only: RSS and RssAnon (MiB), open descriptors and
responses per second over time, one panel each, the load's end marked.

    python3 soak_chart.py samples.csv out.svg TITLE
"""

import csv
import sys

W, PANEL, LEFT, GAP = 720, 150, 70, 40


def panel(out, top, xs, series, label, end_x):
    """One panel: `series` is [(name, colour, values)], scaled to the panel's height."""
    hi = max((v for _, _, vals in series for v in vals), default=1) or 1
    x0, x1 = LEFT, W - 20
    xmax = max(xs) or 1
    sx = lambda x: x0 + (x1 - x0) * x / xmax
    sy = lambda y: top + PANEL - PANEL * y / (hi * 1.1)
    out.append(f'<rect x="{x0}" y="{top}" width="{x1 - x0}" height="{PANEL}" fill="none" stroke="#999"/>')
    out.append(f'<text x="8" y="{top + 14}" font-size="12">{label}</text>')
    out.append(f'<text x="{x0 - 4}" y="{top + 10}" font-size="10" text-anchor="end">{hi * 1.1:.0f}</text>')
    out.append(f'<text x="{x0 - 4}" y="{top + PANEL}" font-size="10" text-anchor="end">0</text>')
    if end_x is not None:
        out.append(f'<line x1="{sx(end_x):.1f}" y1="{top}" x2="{sx(end_x):.1f}" y2="{top + PANEL}" '
                   'stroke="#c03030" stroke-dasharray="4,3"/>')
    for i, (name, colour, vals) in enumerate(series):
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, vals))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<text x="{x1 - 4}" y="{top + 14 + 14 * i}" font-size="11" text-anchor="end" '
                   f'fill="{colour}">{name}</text>')


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    xs = [float(r["seconds"]) for r in rows]
    rss = [int(r["rss_kib"]) / 1024 for r in rows]
    anon = [int(r["anon_kib"]) / 1024 for r in rows]
    fds = [int(r["fds"]) for r in rows]
    socks = [int(r["sockets"]) for r in rows]
    resp = [int(r["responses"]) for r in rows]
    rate = [0.0] + [max(0.0, (resp[i] - resp[i - 1]) / max(xs[i] - xs[i - 1], 1e-3)) for i in range(1, len(rows))]
    load_end = max((x for x, r in zip(xs, rows) if r["phase"] == "load"), default=None)
    h = 40 + 3 * (PANEL + GAP) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif">',
           f'<rect width="{W}" height="{h}" fill="white"/>',
           f'<text x="{W / 2}" y="22" font-size="14" text-anchor="middle">{sys.argv[3]}</text>']
    top = 40
    panel(out, top, xs, [("RSS", "#2a7ab0", rss), ("RssAnon", "#70a040", anon)], "MiB", load_end)
    top += PANEL + GAP
    panel(out, top, xs, [("open descriptors", "#806020", fds), ("of which sockets", "#b05080", socks)], "fds", load_end)
    top += PANEL + GAP
    panel(out, top, xs, [("responses/s", "#404040", rate)], "req/s", load_end)
    out.append(f'<text x="{W / 2}" y="{h - 6}" font-size="11" text-anchor="middle">seconds (dashed: load ends)'
               '</text>')
    out.append("</svg>")
    open(sys.argv[2], "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
