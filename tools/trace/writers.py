"""Writers of the trace report: ``index.html`` (one self-contained page: inline CSS and script, no
external assets, so it opens from a CI artifact or a mail attachment), ``report.md`` and
``report.json`` (schema ``contracts/report/report.schema.json``)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from llorch.tools.trace.model import STATUSES, Report


def write_all(report: Report, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=1, sort_keys=False) + "\n",
                                         encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    (out_dir / "index.html").write_text(html(report), encoding="utf-8")


def _outcomes(test: dict[str, Any]) -> str:
    runs = test["runs"]
    return ", ".join(sorted({r["outcome"] for r in runs})) if runs else "not run"


def env_text(env: dict[str, Any] | None) -> str:
    """One line describing a run's environment (results JSON ``environment``)."""
    if not env:
        return "environment not recorded (JUnit input)"
    target = env.get("target") or {}
    parts = [f"python {env.get('python')}", str(env.get("platform")), f"host {env.get('host')}",
             f"llorch {env.get('llorch')}", f"gpu {env.get('gpu') or 'none'}"]
    if target:
        parts.append("target " + " ".join(f"{k}={v}" for k, v in sorted(target.items())))
    return ", ".join(parts)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: Report) -> str:
    s = report.summary
    lines = ["# Trace report", "",
             f"Generated {report.generated}. {report.summary_line()}.", "",
             f"Gate over profiles {', '.join(report.profiles)}: "
             + ("**passed**" if report.gate_passed else f"**failed** ({len(report.gate_failures)} MUST)"),
             ""]
    for failure in report.gate_failures:
        lines.append(f"- {failure.id} ({failure.profile}): {_md(failure.reason)}")
    if report.gate_failures:
        lines.append("")
    for title, key in (("By profile", "by_profile"), ("By area", "by_area")):
        lines += [f"## {title}", "", "| | total | " + " | ".join(STATUSES) + " |",
                  "|---|---:|" + "---:|" * len(STATUSES)]
        for name, counts in s[key].items():
            cells = " | ".join(str(counts[x]) for x in STATUSES)
            lines.append(f"| {name} | {counts['total']} | {cells} |")
        lines.append("")
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {_md(w)}" for w in report.warnings] + [""]
    lines += ["## Requirements", "", "| ID | level | profile | status | tests | code |",
              "|---|---|---|---|---|---|"]
    for r in report.requirements:
        tests = "<br>".join(f"`{_md(t['nodeid'])}` {_outcomes(t)}"
                            + ("" if t["review"] == "reviewed" else f" ({t['review']})") for t in r["tests"])
        code = "<br>".join(f"`{c['file']}` {c['name']}" for c in r["code"])
        status = r["status"]
        if r["waiver"]:
            status += f" (waiver: issue #{r['waiver']['issue']})"
        if r["skip_reasons"]:
            status += " — " + "; ".join(r["skip_reasons"])
        lines.append(f"| [{r['id']}]({r['spec']}#{r['anchor']}) | {r['level'] or ''} | {r['profile']} | "
                     f"{_md(status)} | {tests or '—'} | {code or '—'} |")
    if report.retired:
        lines += ["", "## Retired", ""]
        lines += [f"- {r['id']} ({r['spec']}): {_md(r['text'])}" for r in report.retired]
    lines += ["", "## Runs", ""]
    for run in report.runs:
        counts = ", ".join(f"{k}={v}" for k, v in run["counts"].items())
        lines.append(f"- `{run['source']}` ({run['kind']}): {counts}; {env_text(run['environment'])}")
    return "\n".join(lines) + "\n"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin:0 0 .3em}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f4f4f4;position:sticky;top:0}
.s{font-weight:600;padding:0 .4em;border-radius:3px;white-space:nowrap}
.passed{background:#d7f5dd}.failed{background:#f8d0d0}.untested{background:#eee}
.skipped{background:#fdf1c7}.waived{background:#dde7fb}.suspect{background:#f7dcf3}.retired{color:#888}
.o-passed,.o-xpassed{color:#17692b}.o-failed,.o-error,.o-xfailed{color:#a11}.o-skipped{color:#8a6d00}
code{font-size:12px}.muted{color:#777}#filters{margin:.5em 0}#filters *{margin-right:.6em}
.gate-ok{color:#17692b}.gate-bad{color:#a11}td.text{max-width:40em}
"""

_JS = """
function f(){var q=document.getElementById('q').value.toLowerCase(),
st=document.getElementById('st').value,pr=document.getElementById('pr').value,
lv=document.getElementById('lv').value,n=0;
document.querySelectorAll('#reqs tbody tr').forEach(function(r){
var ok=(!q||r.textContent.toLowerCase().indexOf(q)>=0)&&(!st||r.dataset.status==st)&&
(!pr||r.dataset.profile==pr)&&(!lv||r.dataset.level==lv);r.style.display=ok?'':'none';if(ok)n++;});
document.getElementById('n').textContent=n;}
document.querySelectorAll('#filters input,#filters select').forEach(function(e){
e.addEventListener('input',f);});f();
"""


def _options(values: list[str]) -> str:
    return "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)


def _count_table(title: str, groups: dict[str, dict[str, int]]) -> str:
    head = "".join(f"<th>{s}</th>" for s in STATUSES)
    body = "".join(
        f"<tr><td>{escape(name)}</td><td>{c['total']}</td>"
        + "".join(f'<td class="{s if c[s] else ""}">{c[s]}</td>' for s in STATUSES) + "</tr>"
        for name, c in groups.items())
    return f"<h2>{title}</h2><table><tr><th></th><th>total</th>{head}</tr>{body}</table>"


def _test_cell(t: dict[str, Any]) -> str:
    outcomes = "".join(
        f' <span class="o-{escape(r["outcome"])}">{escape(r["outcome"])}</span>'
        + (f' <span class="muted">({escape(r["skip_reason"])})</span>' if r["skip_reason"] else "")
        + (f' <span class="muted">{escape(r["message"])}</span>' if r["message"] else "")
        for r in t["runs"]) or ' <span class="muted">not run</span>'
    css = "suspect" if t["review"] == "suspect" else ""
    review = "" if t["review"] == "reviewed" else f' <span class="s {css}">{t["review"]}</span>'
    return f"<div><code>{escape(t['nodeid'])}</code>{outcomes}{review}</div>"


def html(report: Report) -> str:
    s = report.summary
    rows = []
    for r in report.requirements:
        status = f'<span class="s {r["status"]}">{r["status"]}</span>'
        if r["waiver"]:
            status += (f'<div class="muted">waived: {escape(r["waiver"]["reason"])} '
                       f'(issue #{r["waiver"]["issue"]})</div>')
        if r["skip_reasons"]:
            status += "".join(f'<div class="muted">skip: {escape(x)}</div>' for x in r["skip_reasons"])
        tests = "".join(_test_cell(t) for t in r["tests"])
        tests += "".join(f'<div class="muted">scenario: {escape(sc["scenario"])} '
                         f'(<code>{escape(sc["feature"])}</code>)</div>'
                         for sc in r["scenarios"] if not sc["nodeid"])
        code = "".join(f"<div><code>{escape(c['file'])}</code> {escape(c['name'])}</div>" for c in r["code"])
        rows.append(
            f'<tr id="{escape(r["id"])}" data-status="{r["status"]}" data-profile="{escape(r["profile"])}" '
            f'data-level="{escape(r["level"] or "")}"><td><b>{escape(r["id"])}</b><div class="muted">'
            f'{escape(r["spec"])}#{escape(r["anchor"])}</div></td><td>{escape(r["keyword"] or "")}</td>'
            f'<td>{escape(r["profile"])}</td><td>{status}</td><td class="text">{escape(r["text"])}'
            f'<div class="muted">{escape(r["section"])}</div></td>'
            f'<td>{tests or "<span class=muted>none</span>"}</td>'
            f'<td>{code or "<span class=muted>none</span>"}</td></tr>')
    gate = (f'<p class="gate-ok">Gate over {escape(", ".join(report.profiles))}: passed</p>'
            if report.gate_passed else
            f'<p class="gate-bad">Gate over {escape(", ".join(report.profiles))}: failed</p><ul>'
            + "".join(f"<li><a href=\"#{escape(g.id)}\">{escape(g.id)}</a> ({escape(g.profile)}): "
                      f"{escape(g.reason)}</li>" for g in report.gate_failures) + "</ul>")
    warnings = ("<h2>Warnings</h2><ul>" + "".join(f"<li>{escape(w)}</li>" for w in report.warnings)
                + "</ul>") if report.warnings else ""
    envs = "".join(
        f"<tr><td><code>{escape(run['source'])}</code></td><td>{escape(run['kind'])}</td>"
        f"<td>{escape(', '.join(f'{k}: {v}' for k, v in run['counts'].items()))}</td>"
        f"<td>{escape(env_text(run['environment']))}</td></tr>"
        for run in report.runs)
    retired = "".join(f"<li><b>{escape(r['id'])}</b> ({escape(r['spec'])}): {escape(r['text'])}</li>"
                      for r in report.retired)
    retired = f"<h2>Retired</h2><ul>{retired}</ul>" if retired else ""
    profiles = sorted({r["profile"] for r in report.requirements})
    levels = sorted({r["level"] for r in report.requirements if r["level"]})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>llorch trace report</title>
<style>{_CSS}</style></head><body>
<h1>llorch trace report</h1>
<p>Generated {escape(report.generated)}. {escape(report.summary_line())}.</p>
{gate}
{_count_table("By profile", s["by_profile"])}
{_count_table("By area", s["by_area"])}
{warnings}
<h2>Requirements (<span id="n">{len(report.requirements)}</span> shown)</h2>
<div id="filters"><input id="q" type="search" placeholder="search id, text, test, code…" size="40">
<select id="st"><option value="">any status</option>{_options(list(STATUSES))}</select>
<select id="pr"><option value="">any profile</option>{_options(profiles)}</select>
<select id="lv"><option value="">any level</option>{_options(levels)}</select></div>
<table id="reqs"><thead><tr><th>ID</th><th>level</th><th>profile</th><th>status</th><th>requirement</th>
<th>tests</th><th>code</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
{retired}
<h2>Runs and environment</h2>
<table><tr><th>results</th><th>kind</th><th>outcomes</th><th>environment</th></tr>{envs}</table>
<script>{_JS}</script>
</body></html>
"""
