"""``report.html``: one self-contained page (inline CSS, SVG and data-URI images; no URL).

A Content-Security-Policy ``<meta>`` allows only inline styles/scripts and ``data:``
images, so any stray external reference would be blocked and show as a console error.
The small inline script only records load errors in ``body[data-selfcheck]``; the page
reads the same with scripts off.
"""

from __future__ import annotations

from html import escape
from typing import Any

from vlmfast.report.fmt import cell

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

CSS = """
body{font:14px/1.45 Helvetica,Arial,sans-serif;margin:0;color:#222;display:flex}
nav{position:sticky;top:0;align-self:flex-start;height:100vh;overflow:auto;width:210px;
padding:12px;background:#f4f4f4;border-right:1px solid #ddd;font-size:13px;flex:none}
nav a{display:block;color:#234;text-decoration:none;padding:2px 0}
nav .nr{color:#999}
main{padding:16px 24px;max-width:1200px;min-width:0}
h1{font-size:22px;margin:4px 0 12px}h2{border-bottom:2px solid #ccc;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;margin:6px 0 4px;font-size:12.5px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eee}td.n{text-align:right;white-space:nowrap}
caption{text-align:left;font-weight:bold;padding:4px 0}
p.note{color:#555;font-size:12px;margin:2px 0 12px;max-width:900px}
.notrun{background:#fff4e0;border:1px solid #e0b060;padding:6px 10px;display:inline-block}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top;max-width:100%;overflow-x:auto}
figcaption{font-size:11.5px;color:#555;max-width:520px}
.card{border:1px solid #ccc;border-radius:4px;padding:6px 10px;margin:8px 0;display:inline-block;
vertical-align:top;width:620px;max-width:100%}
.card h4{margin:2px 0}.meta{color:#555;font-size:11.5px;margin:2px 0}
img.sheet{image-rendering:pixelated;display:block;margin:4px 0}
.tok{padding:0 1px;border-radius:2px}ol.captions{margin:4px 0;padding-left:20px;font-size:12.5px}
pre{background:#f7f7f7;padding:8px;font-size:11.5px;max-height:360px;overflow:auto}
.claim{color:#6a3d9a}
"""

SCRIPT = """
(function(){var errs=[];
window.addEventListener('error',function(e){var t=e.target||{};
errs.push((t.tagName||'script')+':'+(t.src||e.message||''));},true);
window.addEventListener('load',function(){var bad=0,im=document.images;
for(var i=0;i<im.length;i++){if(!im[i].complete||im[i].naturalWidth===0)bad++;}
document.body.setAttribute('data-selfcheck',errs.length||bad?'fail:'+errs.length+':'+bad:'ok');});
})();
"""

NUMERIC = {"num", "delta", "pct", "int", "p", "sec"}


def render_table(sid: str, t: dict[str, Any]) -> str:
    cols = t["columns"]
    head = "".join(f"<th>{escape(c['label'])}</th>" for c in cols)
    body = []
    for i, row in enumerate(t["rows"]):
        tds = []
        for c in cols:
            text = cell(row.get(c["key"]), c["style"])
            cls = ' class="n"' if c["style"] in NUMERIC else ""
            if c["key"] == "paper" and text:
                cls = ' class="claim"'
            key = f"{sid}/{t['id']}/{i}/{c['key']}"
            inner = escape(text)
            if c["key"] == "page" and text.startswith("features/"):
                inner = f'<a href="{escape(text)}">{inner}</a>'
            tds.append(f'<td{cls} data-key="{escape(key)}">{inner}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    out = [f'<table id="t-{escape(sid)}-{escape(t["id"])}"><caption>{escape(t["title"])}</caption>']
    if any(c["label"] for c in cols):
        out.append(f"<thead><tr>{head}</tr></thead>")
    out.append("<tbody>" + "".join(body) + "</tbody></table>")
    if t.get("note"):
        out.append(f'<p class="note">{escape(t["note"])}</p>')
    return "\n".join(out)


def figure(svg: str, caption: str) -> str:
    return f"<figure>\n{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def page(title: str, body: str) -> str:
    """A whole self-contained HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n"
        f"<script>{SCRIPT}</script>\n</head>\n<body>\n{body}\n</body></html>\n"
    )


def render(
    results: dict[str, Any],
    extras: dict[str, list[str]],
) -> str:
    """The report: ``extras[section id]`` are HTML blocks (figures, diagrams, cards)
    placed under that section's tables (``"<id>:before"`` above them)."""
    sections = results["sections"]
    nav = []
    parts = []
    for s in sections:
        sid = s["id"]
        if sid == "header":
            parts.append(f"<h1>{escape(s['title'])}</h1>")
            parts += [render_table(sid, t) for t in s["tables"]]
            nav.append(f'<a href="#s-header">{escape(s["title"])}</a>')
            continue
        cls = ' class="nr"' if s["status"] != "ran" else ""
        mark = " (not run)" if s["status"] != "ran" else ""
        nav.append(f'<a{cls} href="#s-{escape(sid)}">{escape(s["title"])}{mark}</a>')
        parts.append(f'<section id="s-{escape(sid)}"><h2>{escape(s["title"])}</h2>')
        if s["status"] != "ran":
            parts.append(f'<p class="notrun" data-status="not-run">{escape(s["note"])}</p>')
        elif s.get("note"):
            parts.append(f'<p class="note">{escape(s["note"])}</p>')
        parts += extras.get(f"{sid}:before", [])
        parts += [render_table(sid, t) for t in s["tables"]]
        parts += extras.get(sid, [])
        if "config" in s:
            parts.append(f"<pre>{escape(s['config'])}</pre>")
        parts.append("</section>")
    body = (
        '<nav id="toc"><b>Contents</b>\n' + "\n".join(nav) + "</nav>\n"
        '<main id="s-header">\n' + "\n".join(parts) + "\n</main>"
    )
    title = sections[0]["title"] if sections else "vlmfast report"
    return page(title, body)
