#!/usr/bin/env python3
"""Helpers for render.sh: make the traffic, draw the dashboard, shoot /alerts.

  render.py traffic --smtp 127.0.0.1:PORT [--duration 240]
      Sends mail through mailbrake from several loopback source addresses
      (127.0.0.2 ... 127.0.0.8), one [[vhost]] each: five calm hosting
      customers, a newsletter that runs into its limit, and a compromised
      site that sends hundreds of recipients, is deferred, then locked.

  render.py draw --prom http://127.0.0.1:PORT --start UNIX --end UNIX --out dashboard.png
      Reads grafana/mailbrake-dashboard.json, runs each panel's PromQL
      against Prometheus (/api/v1/query_range and /api/v1/query) over
      [start, end] and draws the panels in the dashboard's own grid layout
      with matplotlib. Grafana's variables are replaced: $__rate_interval
      by 30s, $__range by the length of the window, $listener by .*.

  render.py alerts --chromium /usr/bin/chromium --url URL --out alerts.png
      Opens Prometheus' alerts page in headless Chromium (over the DevTools
      protocol, loopback only), expands the active alerts, shows their
      annotations, and saves a screenshot.

Needs matplotlib (draw) and websocket-client (alerts); the rest is stdlib.
Only loopback addresses are used.
"""

import argparse
import json
import os
import random
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# name, source address, role. render.sh writes the same list into the
# configuration as [[vhost]] tables (see `vhosts` below).
VHOSTS = [
    ("shop-11", "127.0.0.2", "calm"),
    ("blog-12", "127.0.0.3", "calm"),
    ("bakery-13", "127.0.0.4", "calm"),
    ("dentist-14", "127.0.0.5", "calm"),
    ("club-15", "127.0.0.6", "calm"),
    ("news-17", "127.0.0.7", "newsletter"),
    ("wp-site-66", "127.0.0.8", "runaway"),
]


# --------------------------------------------------------------------------
# traffic
# --------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_vhost = {}

    def add(self, vhost, what, n=1):
        with self.lock:
            d = self.by_vhost.setdefault(vhost, {})
            d[what] = d.get(what, 0) + n


def send_one(host, port, source, mail_from, rcpts, tally, vhost):
    """One SMTP session: MAIL, each RCPT, DATA when one was accepted."""
    try:
        s = smtplib.SMTP(host, port, source_address=(source, 0), timeout=30)
    except OSError as e:
        tally.add(vhost, "connect failed: %s" % e.__class__.__name__)
        return
    try:
        s.ehlo("www.%s.example" % vhost)
        code, _ = s.mail(mail_from)
        if code != 250:
            tally.add(vhost, "MAIL %d" % code)
            tally.add(vhost, "recipients not sent", len(rcpts))
            return
        ok = 0
        for r in rcpts:
            code, _ = s.rcpt(r)
            tally.add(vhost, "RCPT %d" % code)
            if code == 250:
                ok += 1
        if ok:
            body = ("From: <%s>\r\nTo: undisclosed-recipients:;\r\n"
                    "Subject: mailbrake screenshot run\r\n\r\n" % mail_from
                    + ("Test message from render.py.\r\n" * 40))
            code, _ = s.data(body)
            tally.add(vhost, "DATA %d" % code)
        else:
            s.rset()
    except (smtplib.SMTPException, OSError) as e:
        tally.add(vhost, "error: %s" % e.__class__.__name__)
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def traffic(args):
    host, port = args.smtp.rsplit(":", 1)
    port = int(port)
    dur = args.duration
    tally = Tally()
    t0 = time.monotonic()
    rnd = random.Random(20240521)  # the same run every time
    plans = []  # (vhost, source, [(offset, n_rcpts)])

    for name, src, role in VHOSTS:
        sched = []
        if role == "calm":
            # A message every 20-45 s, 1 or 2 recipients, at most 7 in all:
            # well under the 12/1h limit (and under the 80 % that makes a
            # sender appear in the per-sender series).
            t, total = rnd.uniform(2, 20), 0
            while t < dur - 5 and total < 7:
                n = min(rnd.choice([1, 1, 2]), 7 - total)
                sched.append((t, n))
                total += n
                t += rnd.uniform(20, 45)
        elif role == "newsletter":
            # 4 recipients every 40 s from 20 s on, 16 in all: 12 accepted,
            # the last 4 deferred, far from the lock threshold.
            sched = [(20 + 40 * i, 4) for i in range(4) if 20 + 40 * i < dur]
        else:
            # A compromised site from 70 s on: 5 recipients every 2 s.
            t = 70.0
            while t < dur - 20:
                sched.append((t, 5))
                t += 2.0
        plans.append((name, src, sched))

    def run(name, src, sched):
        for i, (off, n) in enumerate(sched):
            delay = t0 + off - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rcpts = ["user%d.%d@customers.example" % (i, k) for k in range(n)]
            send_one(host, port, src, "www-data@%s.example" % name, rcpts, tally, name)

    threads = [threading.Thread(target=run, args=p, daemon=True) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(dur + 120)
    print("traffic: SMTP replies per vhost (%.0f s):" % (time.monotonic() - t0))
    for name, _, role in VHOSTS:
        d = tally.by_vhost.get(name, {})
        print("  %-11s %-10s %s" % (name, role, ", ".join("%s: %d" % kv for kv in sorted(d.items()))))


# --------------------------------------------------------------------------
# draw
# --------------------------------------------------------------------------

RATE_INTERVAL = "30s"

# Grafana's dark theme, roughly.
BG = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
DIM = "#8e8e8e"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c",
           "#5794f2", "#b877d9", "#705da0", "#37872d", "#fade2a"]
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830",
         "yellow": "#fade2a", "blue": "#5794f2"}
OUTCOME_COLOURS = {"accepted": "#73bf69", "deferred": "#ff9830",
                   "rejected": "#f2495c", "observed": "#8ab8ff",
                   "over_limit": "#ff9830", "locked": "#f2495c",
                   "refused": "#f2495c"}


class Prom:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def _get(self, path, params):
        url = "%s%s?%s" % (self.base, path, urllib.parse.urlencode(params))
        with urllib.request.urlopen(url, timeout=30) as r:
            doc = json.load(r)
        if doc.get("status") != "success":
            raise RuntimeError("%s: %s" % (url, doc))
        return doc["data"]

    def range(self, q, start, end, step):
        return self._get("/api/v1/query_range",
                         {"query": q, "start": start, "end": end, "step": step})["result"]

    def instant(self, q, at):
        return self._get("/api/v1/query", {"query": q, "time": at})["result"]


def substitute(expr, range_s):
    return (expr.replace("$__rate_interval", RATE_INTERVAL)
                .replace("$__interval", RATE_INTERVAL)
                .replace("$__range", "%ds" % range_s)
                .replace("$listener", ".*"))


def legend(fmt, metric):
    if not fmt:
        return ", ".join("%s=%s" % kv for kv in sorted(metric.items()) if kv[0] != "__name__") or "value"
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{%s}}" % k, v)
    # labels missing from the result render as empty, as in Grafana
    while "{{" in out and "}}" in out:
        a = out.index("{{")
        b = out.index("}}", a)
        out = out[:a] + out[b + 2:]
    return out.strip()


def fmt_value(v, unit):
    if v is None:
        return "No data"
    if unit == "percentunit":
        return "%.0f%%" % (v * 100)
    if unit == "s":
        if v < 1:
            return "%.3g ms" % (v * 1000)
        return "%.3g s" % v
    if unit == "Bps":
        for u in ("B/s", "kB/s", "MB/s", "GB/s"):
            if abs(v) < 1000:
                return "%.3g %s" % (v, u)
            v /= 1000.0
    if abs(v - round(v)) < 1e-9:
        return "%d" % round(v)
    return "%.3g" % v


def threshold_colour(fc, v):
    steps = (fc.get("thresholds") or {}).get("steps") or []
    colour = "green"
    for s in steps:
        if s.get("value") is None or (v is not None and v >= s["value"]):
            colour = s.get("color", colour)
    return NAMED.get(colour, colour)


def draw(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    import datetime as dt

    prom = Prom(args.prom)
    start, end = int(args.start), int(args.end)
    range_s = max(1, end - start)
    step = args.step
    with open(args.dashboard) as f:
        dash = json.load(f)
    panels = [p for p in dash["panels"] if p["gridPos"]["y"] < args.max_y]
    if not panels:
        sys.exit("draw: no panels above y=%d" % args.max_y)
    grid_h = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)

    # Grafana's grid: 24 columns, rows of 30 px; at 100 dpi and 15 in wide
    # a column is 62 px and a row unit 0.3 in, close to a 1500 px browser.
    width_in = 15.0
    header_units = 3
    height_in = (grid_h + header_units) * 0.30
    plt.rcParams.update({
        "font.family": "DejaVu Sans", "font.size": 8.5,
        "text.color": TEXT, "axes.labelcolor": TEXT,
        "xtick.color": DIM, "ytick.color": DIM, "axes.edgecolor": BORDER,
    })
    fig = plt.figure(figsize=(width_in, height_in), dpi=args.dpi, facecolor=BG)
    total_h = grid_h + header_units
    pad_x, pad_y = 0.004, 0.10  # fractions of one column / one row unit

    def rect(gp, inner_top=0.0, inner_bottom=0.0, inner_left=0.0):
        x0 = gp["x"] / 24.0 + pad_x
        w = gp["w"] / 24.0 - 2 * pad_x
        y_top = 1 - (gp["y"] + header_units) / total_h
        h = gp["h"] / total_h
        return [x0 + inner_left * w, y_top - h + pad_y / total_h + inner_bottom * h,
                w - inner_left * w, h - 2 * pad_y / total_h - (inner_top + inner_bottom) * h]

    t_start = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    t_end = dt.datetime.fromtimestamp(end, dt.timezone.utc)
    fig.text(0.006, 1 - 0.9 / total_h, dash.get("title", "dashboard"), fontsize=17,
             fontweight="bold", va="center", color="#ffffff")
    fig.text(0.006, 1 - 1.75 / total_h,
             "%s to %s UTC   ·   Data source: Prometheus (a real run of mailbrake)   ·   Listener: All"
             % (t_start.strftime("%Y-%m-%d %H:%M:%S"), t_end.strftime("%H:%M:%S")),
             fontsize=9, va="center", color=DIM)
    fig.text(0.006, 1 - 2.45 / total_h,
             "Not a Grafana screenshot: the panels of grafana/mailbrake-dashboard.json, their own queries "
             "($__rate_interval = %s) drawn by grafana/screenshots/render.py" % RATE_INTERVAL,
             fontsize=9, va="center", color=DIM)

    summary = {}

    for p in panels:
        gp = p["gridPos"]
        kind = p["type"]
        title = p.get("title", "")
        fc = (p.get("fieldConfig") or {}).get("defaults") or {}
        unit = fc.get("unit", "short")
        if kind == "row":
            r = rect(gp)
            fig.text(r[0], r[1] + r[3] / 2, "⌄  " + title, fontsize=12, fontweight="bold",
                     va="center", color="#ffffff")
            continue

        frame = fig.add_axes(rect(gp))
        frame.set_facecolor(PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for s in frame.spines.values():
            s.set_color(BORDER)
        title_h = min(0.9 / gp["h"], 0.3)
        frame.text(0.012, 1 - title_h / 2, title, transform=frame.transAxes, fontsize=9.5,
                   fontweight="bold", va="center", color=TEXT)
        targets = p.get("targets", [])

        if kind == "stat":
            t = targets[0]
            res = prom.instant(substitute(t["expr"], range_s), end)
            if p.get("options", {}).get("textMode") == "name":
                txt = ", ".join(legend(t.get("legendFormat"), r["metric"]) for r in res) or "No data"
                colour = threshold_colour(fc, 0)
                size = 18
            else:
                v = float(res[0]["value"][1]) if res else None
                if v is None and "noValue" in fc:
                    v = float(fc["noValue"])
                txt = fmt_value(v, unit)
                colour = threshold_colour(fc, v)
                size = 30 if gp["h"] <= 4 else 40
                summary[title] = txt
            frame.text(0.5, (1 - title_h) / 2, txt, transform=frame.transAxes, fontsize=size,
                       fontweight="bold", ha="center", va="center", color=colour)
            continue

        if kind == "timeseries":
            custom = fc.get("custom", {})
            stacked = (custom.get("stacking") or {}).get("mode") == "normal"
            bars = custom.get("drawStyle") == "bars"
            series = []
            for t in targets:
                for r in prom.range(substitute(t["expr"], range_s), start, end, step):
                    xs = [dt.datetime.fromtimestamp(float(a), dt.timezone.utc) for a, _ in r["values"]]
                    ys = [float(b) for _, b in r["values"]]
                    series.append((legend(t.get("legendFormat"), r["metric"]), r["metric"], xs, ys))
            series = [s for s in series if any(y == y for y in s[3])]  # drop all-NaN
            # as many legend columns as the longest name allows, and room
            # below the plot for the legend's rows
            ncol, rows = 1, 0
            if series:
                avail = gp["w"] * 62 * 0.95
                entry = max(len(s[0]) for s in series) * 5.2 + 34
                ncol = max(1, min(len(series), int(avail // entry)))
                rows = -(-len(series) // ncol)
            px_h = gp["h"] * 30.0
            bottom = min(0.5, (34 + 13 * max(rows, 1)) / px_h)
            ax = fig.add_axes(rect(gp, inner_top=title_h + 0.02, inner_bottom=bottom, inner_left=0.07))
            ax.set_facecolor(PANEL)
            # outcome colours (accepted green, deferred orange...) where
            # they tell the series apart, the palette otherwise
            keys = [m.get("outcome") or m.get("result") for _, m, _, _ in series]
            by_outcome = len(set(keys)) == len(keys) and all(k in OUTCOME_COLOURS for k in keys)
            colours = [OUTCOME_COLOURS[k] if by_outcome else PALETTE[i % len(PALETTE)]
                       for i, k in enumerate(keys)]
            if not series:
                ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center",
                        color=DIM, fontsize=11)
                ax.set_ylim(0, 1)
            elif stacked:
                # align on the union of timestamps, missing points as 0
                grid = sorted({x for s in series for x in s[2]})
                ys = []
                for _, _, xs, vals in series:
                    m = dict(zip(xs, vals))
                    ys.append([m.get(x, 0.0) if m.get(x, 0.0) == m.get(x, 0.0) else 0.0 for x in grid])
                ax.stackplot(grid, *ys, colors=colours, alpha=0.6, linewidth=0.8,
                             labels=[s[0] for s in series])
            else:
                for (name, _, xs, vals), c in zip(series, colours):
                    if bars:
                        ax.bar(xs, vals, width=step / 86400.0 * 0.8, color=c, alpha=0.8, label=name)
                    else:
                        ax.plot(xs, vals, color=c, linewidth=1.3, label=name)
                        ax.fill_between(xs, vals, color=c, alpha=0.10)
            ax.set_xlim(t_start, t_end)
            lo = fc.get("min")
            if lo is not None:
                ax.set_ylim(bottom=lo)
            if series and ax.get_ylim()[1] <= 0:
                ax.set_ylim(top=1)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=dt.timezone.utc))
            ax.xaxis.set_major_locator(mdates.MinuteLocator(tz=dt.timezone.utc))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_formatter(FuncFormatter(
                lambda v, _p, unit=unit: fmt_value(v, unit) if v else "0"))
            ax.grid(True, color=BORDER, linewidth=0.6)
            ax.tick_params(labelsize=7.5, length=0)
            for s in ax.spines.values():
                s.set_visible(False)
            if series:
                ax.legend(loc="upper left", bbox_to_anchor=(-0.06, -20.0 / (px_h * (1 - bottom - title_h))),
                          ncol=ncol, frameon=False,
                          fontsize=7.5, labelcolor=TEXT, handlelength=1.2, columnspacing=1.0,
                          labelspacing=0.25)
            continue

        if kind == "bargauge":
            t = targets[0]
            res = prom.instant(substitute(t["expr"], range_s), end)
            res.sort(key=lambda r: -float(r["value"][1]))
            ax = fig.add_axes(rect(gp, inner_top=title_h + 0.04, inner_bottom=0.04, inner_left=0.25))
            ax.set_facecolor(PANEL)
            ax.set_xlim(0, fc.get("max", 1))
            ax.axis("off")
            n = len(res)
            slots = max(n, 6)  # bars from the top, at a steady height
            if not res:
                ax.text(0.5, 0.5, "No data", ha="center", va="center", color=DIM, fontsize=11)
            for i, r in enumerate(res):
                v = float(r["value"][1])
                y = slots - 1 - i
                ax.barh(y, fc.get("max", 1), height=0.6, color="#22252b")
                ax.barh(y, min(v, fc.get("max", 1)), height=0.6, color=threshold_colour(fc, v))
                ax.text(-0.02, y, legend(t.get("legendFormat"), r["metric"]), ha="right",
                        va="center", fontsize=9, color=TEXT, transform=ax.transData)
                ax.text(fc.get("max", 1) * 0.98, y, fmt_value(v, unit), ha="right", va="center",
                        fontsize=10, fontweight="bold", color="#111217")
            ax.set_ylim(-0.6, slots - 0.4)
            continue

        if kind == "table":
            results = [prom.instant(substitute(t["expr"], range_s), end) for t in targets]
            org = {}
            for tr in p.get("transformations") or []:
                if tr["id"] == "organize":
                    org = tr["options"]
            excl = {k for k, v in (org.get("excludeByName") or {}).items() if v}
            rename = org.get("renameByName") or {}
            order = org.get("indexByName") or {}
            rows = {}
            cols = []
            for i, res in enumerate(results):
                vcol = "Value #%s" % targets[i].get("refId", chr(65 + i)) if len(results) > 1 else "Value"
                for r in res:
                    key = tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__"))
                    row = rows.setdefault(key, dict(r["metric"]))
                    row[vcol] = float(r["value"][1])
                    for c in list(r["metric"].keys()) + [vcol]:
                        if c not in cols:
                            cols.append(c)
            cols = [c for c in cols if c not in excl]
            cols.sort(key=lambda c: order.get(c, 99))
            header = [rename.get(c, c) for c in cols]
            body = []
            for row in rows.values():
                line = []
                for c in cols:
                    v = row.get(c, "")
                    if isinstance(v, float):
                        v = fmt_value(v, "percentunit" if rename.get(c) == "Usage" else "short")
                    line.append(v)
                body.append(line)
            if "Usage" in header:
                ui = header.index("Usage")
                body.sort(key=lambda l: -float(l[ui].rstrip("%") or 0))
            ax = fig.add_axes(rect(gp, inner_top=title_h + 0.03, inner_bottom=0.03))
            ax.axis("off")
            if not body:
                ax.text(0.5, 0.5, "No data", ha="center", va="center", color=DIM, fontsize=11)
                continue
            tb = ax.table(cellText=body, colLabels=header, loc="upper center", cellLoc="left",
                          colLoc="left")
            tb.auto_set_font_size(False)
            tb.set_fontsize(9)
            for (ri, ci), cell in tb.get_celld().items():
                cell.set_edgecolor(BORDER)
                cell.set_facecolor("#22252b" if ri == 0 else PANEL)
                cell.get_text().set_color("#ffffff" if ri == 0 else TEXT)
                cell.set_height(0.11)
                if ri > 0 and header[ci] == "Usage":
                    try:
                        cell.get_text().set_color(threshold_colour(
                            {"thresholds": {"steps": [{"value": None, "color": "green"},
                                                       {"value": 0.8, "color": "yellow"},
                                                       {"value": 1, "color": "red"}]}},
                            float(body[ri - 1][ci].rstrip("%")) / 100))
                    except ValueError:
                        pass
            summary[title] = body
            continue

        if kind == "piechart":
            t = targets[0]
            res = prom.instant(substitute(t["expr"], range_s), end)
            vals = [(legend(t.get("legendFormat"), r["metric"]), float(r["value"][1])) for r in res]
            vals = [v for v in vals if v[1] > 0]
            ax = fig.add_axes(rect(gp, inner_top=title_h + 0.03, inner_bottom=0.03))
            ax.set_facecolor(PANEL)
            if not vals:
                ax.axis("off")
                ax.text(0.5, 0.5, "No data", ha="center", va="center", color=DIM, fontsize=11)
            else:
                ax.pie([v for _, v in vals], labels=[n for n, _ in vals], colors=PALETTE,
                       wedgeprops={"width": 0.4}, textprops={"color": TEXT})
            continue

        frame.text(0.5, 0.5, "(panel type %s not drawn)" % kind, transform=frame.transAxes,
                   ha="center", va="center", color=DIM)

    out = args.out
    fig.savefig(out, dpi=args.dpi, facecolor=BG)
    print("draw: wrote %s (%d kB)" % (out, os.path.getsize(out) // 1024))
    for k, v in summary.items():
        print("  %s: %s" % (k, v))


# --------------------------------------------------------------------------
# alerts
# --------------------------------------------------------------------------

EXPAND_JS = r"""
(function () {
  // What a person does on the page: open the rules that fire (or, with
  // --expand active, the pending ones too) and tick "Show annotations".
  var n = 0;
  document.querySelectorAll('tr.alert_header').forEach(function (h) {
    if (h.classList.contains('alert-danger') ||
        (EXPAND_PENDING && h.classList.contains('alert-warning'))) { h.click(); n++; }
  });
  var sa = document.querySelector('div.show-annotations');
  if (sa) sa.click();
  return n;
})()
"""


def alerts(args):
    import websocket  # websocket-client

    port = args.cdp_port
    profile = tempfile.mkdtemp(prefix="mailbrake-chromium-")
    cmd = [args.chromium, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", "--disable-extensions",
           "--hide-scrollbars", "--user-data-dir=" + profile,
           "--remote-debugging-address=127.0.0.1",
           "--remote-debugging-port=%d" % port,
           "--remote-allow-origins=http://127.0.0.1:%d" % port,
           "--window-size=%d,%d" % (args.width, args.height), "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ws_url = None
        for _ in range(100):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    ws_url = pages[0]["webSocketDebuggerUrl"]
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if not ws_url:
            sys.exit("alerts: Chromium's DevTools endpoint did not come up")
        ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        seq = [0]

        def call(method, **params):
            seq[0] += 1
            ws.send(json.dumps({"id": seq[0], "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == seq[0]:
                    if "error" in msg:
                        raise RuntimeError("%s: %s" % (method, msg["error"]))
                    return msg.get("result", {})

        call("Page.enable")
        call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
             deviceScaleFactor=1, mobile=False)
        call("Page.navigate", url=args.url)
        for _ in range(100):
            r = call("Runtime.evaluate", expression="document.readyState", returnByValue=True)
            if r["result"].get("value") == "complete":
                break
            time.sleep(0.1)
        time.sleep(0.5)
        js = EXPAND_JS.replace("EXPAND_PENDING", "true" if args.expand == "active" else "false")
        n = call("Runtime.evaluate", expression=js, returnByValue=True)["result"].get("value")
        time.sleep(0.5)

        def measure(what):
            v = call("Runtime.evaluate", expression="document.documentElement." + what,
                     returnByValue=True)["result"].get("value")
            return int(v or 0)

        # The page is as wide as its widest rule text: widen the window to
        # it (bounded) so that nothing is cut off on the right, then take
        # the whole height (bounded).
        w = min(max(measure("scrollWidth"), args.width), args.max_width)
        call("Emulation.setDeviceMetricsOverride", width=w, height=args.height,
             deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)
        h = min(max(measure("scrollHeight"), args.height), args.max_height)
        call("Emulation.setDeviceMetricsOverride", width=w, height=h,
             deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)
        shot = call("Page.captureScreenshot", format="png",
                    clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        import base64
        with open(args.out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        ws.close()
        print("alerts: expanded %s rule(s), wrote %s (%dx%d, %d kB)"
              % (n, args.out, w, h, os.path.getsize(args.out) // 1024))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", profile])


# --------------------------------------------------------------------------

def vhosts(_args):
    """The [[vhost]] tables for the configuration render.sh writes."""
    for name, src, _ in VHOSTS:
        print('[[vhost]]\nname = "%s"\nnetworks = ["%s/32"]\n' % (name, src))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("traffic")
    t.add_argument("--smtp", required=True)
    t.add_argument("--duration", type=float, default=240)
    d = sub.add_parser("draw")
    d.add_argument("--prom", required=True)
    d.add_argument("--start", required=True, type=float)
    d.add_argument("--end", required=True, type=float)
    d.add_argument("--step", type=int, default=5)
    d.add_argument("--dashboard", default=os.path.join(REPO, "grafana", "mailbrake-dashboard.json"))
    d.add_argument("--max-y", type=int, default=68,
                   help="draw the panels above this grid row (68: down to the Latency row)")
    d.add_argument("--dpi", type=int, default=100)
    d.add_argument("--out", required=True)
    a = sub.add_parser("alerts")
    a.add_argument("--chromium", default="chromium")
    a.add_argument("--url", required=True)
    a.add_argument("--cdp-port", type=int, required=True)
    a.add_argument("--width", type=int, default=1400)
    a.add_argument("--height", type=int, default=900)
    a.add_argument("--max-width", type=int, default=2000)
    a.add_argument("--max-height", type=int, default=1800)
    a.add_argument("--expand", choices=["firing", "active"], default="firing",
                   help="rules to open: the firing ones, or pending ones too")
    a.add_argument("--out", required=True)
    sub.add_parser("vhosts")
    args = ap.parse_args()
    {"traffic": traffic, "draw": draw, "alerts": alerts, "vhosts": vhosts}[args.cmd](args)


if __name__ == "__main__":
    main()
