"""The jinja2 template of report.html (autoescaped: questions and judge replies are model output, never markup)."""

from __future__ import annotations

import jinja2

SOURCE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>sq-jax run report: {{ report.output_dir }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 0 24px 48px; color: #222; }
h1 { font-size: 22px; margin: 20px 0 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; margin-top: 32px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f3f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 10px 0 18px; } figcaption { font-size: 13px; color: #555; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.note { color: #8a5300; background: #fff6e5; padding: 4px 8px; border-radius: 4px; }
.muted { color: #666; font-size: 12px; }
.examples { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.example { border: 1px solid #e3e3e3; border-radius: 4px; padding: 6px 8px; margin: 6px 0; font-size: 13px;
           overflow-wrap: anywhere; }
.example.kept { border-left: 4px solid #5a9e4b; } .example.dropped { border-left: 4px solid #b04a5a; }
.example pre { white-space: pre-wrap; margin: 4px 0; font-size: 12px; background: #f7f7f7; padding: 4px; }
.reason { font-weight: 600; color: #b04a5a; }
nav a { margin-right: 12px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0 18px; align-items: start; }
</style></head><body>
{% macro plot(plot_id) -%}
{% set p = plots.get(plot_id) %}
{% if p and p.png %}<figure id="plot-{{ plot_id }}"><img class="plot" alt="{{ p.title }}"
  src="data:image/png;base64,{{ p.png }}"><figcaption>{{ p.title }}</figcaption></figure>
{% elif p %}<p class="note" id="plot-{{ plot_id }}">Plot "{{ p.title }}" could not be drawn: {{ p.error }}</p>
{% endif %}
{%- endmacro %}
{% macro show(e, side) -%}
<div class="example {{ side }}"><span class="muted">{{ e.id }}</span>
<pre>{{ e.text }}</pre>
{% if e.response %}<div class="muted">response:</div><pre>{{ e.response }}</pre>{% endif %}
{% for k, v in e.evidence.items() %}<div><b>{{ k }}</b>: {% if v is string and v|length > 60 %}<pre>{{ v }}</pre>
{%- elif v is number %}{{ "%.4g"|format(v) }}{% else %}{{ v }}{% endif %}</div>{% endfor %}
</div>
{%- endmacro %}
<h1>sq-jax pipeline run</h1>
<p class="muted">{{ report.output_dir }} · seed {{ report.seed }} · {{ stages|length }} stages ·
written {{ written }} · the tables in <code>report.md</code>, the numbers in <code>report.json</code></p>
<nav><a href="#funnel">Funnel</a><a href="#distributions">Distributions</a><a href="#filters">Filters</a>
<a href="#training">Training</a><a href="#time">Time</a><a href="#cost">Cost at 1M</a></nav>
{% for p in problems %}<p class="note">{{ p }}</p>{% endfor %}

<h2 id="funnel">Funnel</h2>
{% if not finished %}<p class="muted">Stages are left to run: the funnel and wall-time plots are drawn when every
stage is done (or now by <code>sq-jax pipeline report CONFIG</code>).</p>{% endif %}
{{ plot("funnel") }}
<table><tr><th>stage</th><th>kind</th><th>records in</th><th>records out</th><th>kept</th>
<th>dropped (stage stats)</th><th>dropped/ rows by reason</th></tr>
{% for r in funnel %}<tr id="funnel-{{ r.stage }}"><td>{{ r.stage }}</td><td>{{ r.kind }}</td>
<td class="num">{{ "{:,}".format(r["in"]) if r["in"] is not none else "" }}</td><td class="num">{{ "{:,}".format(r.out) }}</td>
<td class="num">{{ "{:.1%}".format(r.out / r["in"]) if r["in"] else "" }}</td>
<td>{% for k, v in r.drops.items() %}{{ k }} {{ "{:,}".format(v) }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td>{% for k, v in r.dropped_rows.items() %}{{ k }} {{ "{:,}".format(v) }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>
<p class="muted">"records in" is a filter's input, a generation stage's requests (responses: questions × samples),
or its input stages' records; the reward stage turns n responses a question into one.</p>

<h2 id="distributions">Distributions</h2>
<p class="muted">Histograms are drawn from a uniform sample of at most 20,000 values a series (exact counts, means
and ranges are in the tables); lengths are whitespace-separated words.</p>
<div class="grid">{% for id in ("question-lengths", "response-lengths", "difficulty", "rewards", "majority-share") %}
{{ plot(id) }}{% endfor %}</div>
{% for name, s in summaries.items() if s.get("lengths") %}{% if loop.first %}
<table><tr><th>stage</th><th>field</th><th>rows</th><th>mean words</th><th>min</th><th>max</th></tr>{% endif %}
<tr><td>{{ name }}</td><td>{{ s.lengths.field }}</td><td class="num">{{ "{:,}".format(s.lengths.count) }}</td>
<td class="num">{{ "%.1f"|format(s.lengths.mean) if s.lengths.mean is not none else "" }}</td>
<td class="num">{{ s.lengths.min|int if s.lengths.min is not none else "" }}</td>
<td class="num">{{ s.lengths.max|int if s.lengths.max is not none else "" }}</td></tr>
{% if loop.last %}</table>{% endif %}{% endfor %}

<h2 id="filters">Filters: what each kept and dropped</h2>
{% for name in filters %}{% set s = summaries[name] %}{% set st = stages[name] %}
<section class="filter" id="filter-{{ name }}"><h3>{{ name }} <span class="muted">({{ st.kind }})</span></h3>
{% if st.kind == "filter_difficulty" %}<p class="muted">threshold (highest dropped predicted fail rate):
{{ "%.4g"|format(st.stats.threshold) if st.stats.threshold is number else st.stats.threshold }}</p>{% endif %}
<div class="examples"><div><b>kept</b>
{% for e in s.get("kept_examples", []) %}{{ show(e, "kept") }}{% else %}<p class="muted">no kept rows</p>{% endfor %}</div>
<div><b>dropped</b>
{% for reason, es in s.get("dropped", {}).get("examples", {}).items() %}
<div class="reason">{{ reason }} ({{ "{:,}".format(s.dropped.reasons.get(reason, es|length)) }} rows)</div>
{% for e in es %}{{ show(e, "dropped") }}{% endfor %}
{% else %}<p class="muted dropped-none">this run's {{ name }} dropped nothing{% if not s.get("dropped") %} (it writes no
dropped/ rows){% endif %}</p>{% endfor %}</div></div></section>
{% endfor %}

<h2 id="training">Training</h2>
<div class="grid">{% for name in trains %}{% set st = stages[name] %}
<section class="train" id="train-{{ name }}"><h3>{{ name }} <span class="muted">({{ st.stats.task }},
{{ st.stats.steps }} steps, final loss {{ "%.4g"|format(st.stats.final_loss) if st.stats.final_loss is number else "?" }})</span></h3>
{% if st.stats.eval %}<p class="muted">eval: {% for k, v in st.stats.eval.items() %}{{ k }}
{{ "%.4g"|format(v) if v is number else v }}{% if not loop.last %}, {% endif %}{% endfor %}</p>{% endif %}
{{ plot("train-" ~ name) if ("train-" ~ name) in plots else '' }}
{% if ("train-" ~ name) not in plots %}<p class="muted">no metrics.jsonl</p>{% endif %}</section>
{% endfor %}</div>

<h2 id="time">Time and throughput</h2>
{{ plot("wall-time") }}
<table><tr><th>stage</th><th>kind</th><th>status</th><th>seconds</th><th>rows/s</th><th>generated tokens/s</th>
<th>requests/s</th></tr>
{% for name, st in stages.items() %}<tr><td>{{ name }}</td><td>{{ st.kind }}</td><td>{{ st.status }}</td>
<td class="num">{{ "%.1f"|format(st.seconds) if st.seconds is not none else "" }}</td>
<td class="num">{{ st.counts.get("rows_per_s", "") }}</td>
<td class="num">{{ "%.1f"|format(st.stats.last_run_tokens_per_s) if st.stats.last_run_tokens_per_s is number else "" }}</td>
<td class="num">{{ "%.2f"|format(st.stats.last_run_requests_per_s) if st.stats.last_run_requests_per_s is number else "" }}</td></tr>
{% endfor %}</table>
<p class="muted">Accelerator-hours are not shown: the stage manifests do not record how many chips a stage ran on,
so only wall time on this run's machine is known.</p>

<h2 id="cost">Projected cost at the paper's scale ({{ "{:,}".format(paper_rows) }} final pairs)</h2>
{% if cost %}
<p class="note">A projection from this run's measured rates, not a measurement: the stages whose rows flow into the
final dataset ({{ cost.final_stage }}, {{ "{:,}".format(cost.final_rows) }} rows here) take their measured seconds
× {{ "{:,.0f}".format(cost.scale) }}, the others (models, seed sets, QPO, the scorer, evaluation) their measured
seconds. It assumes the same models, hardware and filter pass rates as this run, and time linear in rows
(compile and start-up time included, so small runs overstate it). With the paper's 7B models on other chips it is
off by orders of magnitude; the paper reports 522.9 A100-hours for 1M pairs.</p>
<table><tr><th>stage</th><th>kind</th><th>measured s</th><th>× scale</th><th>projected hours</th></tr>
{% for r in cost.rows %}<tr><td>{{ r.stage }}</td><td>{{ r.kind }}</td><td class="num">{{ "%.1f"|format(r.seconds) }}</td>
<td class="num">{{ "{:,.0f}".format(r.factor) }}</td><td class="num">{{ "{:,.2f}".format(r.hours) }}</td></tr>{% endfor %}
<tr><th colspan="4">total (one host, back to back)</th><th class="num">{{ "{:,.1f}".format(cost.total_hours) }}</th></tr></table>
{% else %}<p class="muted">No final dataset yet (no export or reward stage done): nothing to project.</p>{% endif %}
</body></html>
"""

TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined,
                              trim_blocks=True, lstrip_blocks=True).from_string(SOURCE)
