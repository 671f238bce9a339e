"""The page at `/` and the API docs at `/docs`: plain HTML and JavaScript, no build step, nothing from the network
but this server. The page calls the same JSON API as any client.

`/` opens on the most popular items (click one to start a history); `/?user_id=3` or `/?history=1,2,3&k=5` fills
the form and recommends on load (how the browser test drives it).
"""

import functools
from pathlib import Path
from typing import Optional

SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")


@functools.lru_cache(maxsize=1)
def _swagger_dir() -> Optional[Path]:
    """Swagger UI's files where an installed package ships them (vLLM, of the cpu/gpu extras, keeps a copy for its
    own offline docs), found without importing the package; None: /docs loads them from FastAPI's CDN."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "entrypoints" / "serve" / "instrumentator" / "static"
    return d if all((d / f).is_file() for f in SWAGGER_FILES) else None


def swagger_asset(name: str) -> Optional[Path]:
    d = _swagger_dir()
    return d / name if d is not None and name in SWAGGER_FILES else None


def swagger_page(root: str, title: str):
    """Swagger UI over this app's schema, its script and style from this server when they are here."""
    from fastapi.openapi.docs import get_swagger_ui_html

    local = {}
    if _swagger_dir() is not None:
        js, css = (f"{root}/docs/{f}" for f in SWAGGER_FILES)
        local = {"swagger_js_url": js, "swagger_css_url": css}
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{title} - API", swagger_favicon_url="",
                               **local)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SLIM recommender</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
 fieldset { border: 1px solid #ccc; margin-bottom: 1em; } input { font: inherit; }
 table { border-collapse: collapse; } td, th { padding: .2em .8em; border-bottom: 1px solid #eee; text-align: left; }
 .chip { display: inline-block; background: #eef; border-radius: 1em; padding: 0 .6em; margin: .1em; cursor: pointer; }
 #error { color: #b00; white-space: pre-wrap; } .muted { color: #777; }
</style></head>
<body>
<h1>SLIM recommender</h1>
<p class="muted" id="run"></p>
<fieldset><legend>Who</legend>
 <label>User id <input id="user_id" size="8"></label> &nbsp;or pick items:
 <input id="search" placeholder="search titles" size="24"> <span id="hits"></span>
 <div>History: <span id="picked" class="muted">(none)</span></div>
 <label>k <input id="k" value="10" size="4"></label>
 <label>Token <input id="token" type="password" size="16" placeholder="if the server needs one"></label>
 <button id="go">Recommend</button>
</fieldset>
<div id="error"></div>
<section id="popular" hidden>
 <h2>Most popular items</h2>
 <p class="muted">Click an item to add it to a history, or type a user id; then Recommend.</p>
 <table><thead><tr><th>#</th><th>item</th><th>title</th></tr></thead><tbody id="pop"></tbody></table>
</section>
<section id="out" hidden>
 <h2>History</h2><ol id="history"></ol>
 <h2>Why</h2><div id="why"></div>
 <h2>Top <span id="n"></span></h2>
 <table><thead><tr><th>#</th><th>item</th><th>title</th><th>score</th></tr></thead><tbody id="top"></tbody></table>
</section>
<script>
const base = location.pathname.replace(/\\/?$/, '/');
const $ = id => document.getElementById(id);
let picked = [];
function headers() {
  const h = {'Content-Type': 'application/json'};
  if ($('token').value) h['Authorization'] = 'Bearer ' + $('token').value;
  return h;
}
function text(tag, s) { const e = document.createElement(tag); e.textContent = s; return e; }
function showPicked() {
  const p = $('picked'); p.textContent = picked.length ? '' : '(none)';
  picked.forEach((it, i) => { const c = text('span', it.title); c.className = 'chip'; c.title = 'remove';
    c.onclick = () => { picked.splice(i, 1); showPicked(); }; p.append(c); });
}
async function search() {
  const q = $('search').value; $('hits').textContent = '';
  if (!q) return;
  const r = await fetch(base + 'items?limit=8&q=' + encodeURIComponent(q), {headers: headers()});
  if (!r.ok) return;
  for (const it of await r.json()) { const c = text('span', it.title); c.className = 'chip';
    c.onclick = () => { picked.push(it); $('user_id').value = ''; showPicked(); }; $('hits').append(c); }
}
async function popular() {
  const r = await fetch(base + 'items?limit=10', {headers: headers()});
  if (!r.ok) return;
  (await r.json()).forEach((it, i) => { const tr = document.createElement('tr'); const t = text('td', it.title);
    t.className = 'chip'; t.title = 'add to the history';
    t.onclick = () => { picked.push(it); $('user_id').value = ''; showPicked(); };
    tr.append(text('td', String(i + 1)), text('td', String(it.item_id)), t); $('pop').append(tr); });
  $('popular').hidden = false;
}
function render(d) {
  $('out').hidden = false; $('history').textContent = ''; $('top').textContent = ''; $('why').textContent = '';
  $('popular').hidden = true;
  if (!d.rationale_used) $('why').append(text('p', 'Rationales are not used by this model: it ranks from the ' +
    'history alone.' + (d.rationale ? ' The stored one, for reading:' : '')));
  d.history.forEach(it => $('history').append(text('li', it.title + ' (' + it.item_id + ')')));
  if (d.rationale) { const ol = document.createElement('ol');
    d.rationale.steps.filter(s => s).forEach(s => ol.append(text('li', s)));
    $('why').append(ol.children.length ? ol : text('p', d.rationale.text));
    const found = (d.rationale.products || []).filter(p => p.item_id);
    if (found.length) { const p = text('p', 'In the catalogue: '); found.forEach(g => { const a = text('a', g.title);
      a.href = base + 'items/' + g.item_id; a.className = 'chip'; a.title = g.product; p.append(a); });
      $('why').append(p); }
    if (d.generation) $('why').append(text('p', 'Written for this history by the student in ' +
      d.generation.seconds.toFixed(1) + ' s.')); }
  else $('why').append(text('p', d.fallback || 'No stored rationale for this request.'));
  $('n').textContent = d.items.length;
  d.items.forEach((it, i) => { const tr = document.createElement('tr');
    [i + 1, it.item_id, it.title, it.score.toFixed(4)].forEach(v => tr.append(text('td', String(v))));
    $('top').append(tr); });
}
async function go() {
  $('error').textContent = '';
  const body = {k: parseInt($('k').value, 10)};
  if ($('user_id').value) body.user_id = parseInt($('user_id').value, 10);
  else body.history = picked.map(it => it.item_id);
  const r = await fetch(base + 'recommend', {method: 'POST', headers: headers(), body: JSON.stringify(body)});
  const d = await r.json();
  if (!r.ok) { $('error').textContent = r.status + ' ' + d.field + ': ' + d.error; return; }
  $('run').textContent = 'model: ' + d.run; render(d);
}
$('go').onclick = go; $('search').oninput = search;
const qs = new URLSearchParams(location.search);
if (qs.get('k')) $('k').value = qs.get('k');
if (qs.get('user_id')) { $('user_id').value = qs.get('user_id'); go(); }
else if (qs.get('history')) {
  picked = qs.get('history').split(',').map(s => ({item_id: parseInt(s, 10), title: '#' + s})); showPicked(); go();
}
else popular();
</script>
</body></html>
"""
