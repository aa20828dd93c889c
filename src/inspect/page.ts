/** The inspector page: one HTML document, its script fed by /state and the /events stream. No framework. */
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>muser inspector</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; border-bottom: 1px solid #ccc; }
  table { border-collapse: collapse; }
  td, th { padding: .1em .7em .1em 0; text-align: left; vertical-align: top; }
  code, pre, td.mono { font-family: ui-monospace, monospace; font-size: 12.5px; }
  pre { background: #f6f6f6; padding: .6em; overflow-x: auto; margin: 0; }
  #trace { max-height: 26em; overflow-y: auto; }
  .off { color: #999; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1 id="title">muser</h1>
<div id="ids"></div>
<div id="status"></div>
<h2>Config space</h2>
<pre id="decoded"></pre>
<details><summary>bytes</summary><pre id="config"></pre></details>
<section id="registers-section" hidden>
<h2>Registers</h2>
<table id="registers"></table>
</section>
<h2>DMA maps</h2>
<table id="dma"></table>
<h2>Interrupts</h2>
<table id="irqs"></table>
<h2>Trace</h2>
<pre id="trace"></pre>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]);
const row = (cells, cls) => '<tr' + (cls ? ' class="' + cls + '"' : '') + '>' + cells.map((c) => '<td class="mono">' + esc(c) + '</td>').join('') + '</tr>';
const head = (cells) => '<tr>' + cells.map((c) => '<th>' + esc(c) + '</th>').join('') + '</tr>';

function show(s) {
  $('title').textContent = 'muser: ' + s.name;
  const i = s.ids;
  $('ids').innerHTML = '<code id="pci-id">' + i.vendor + ':' + i.device + '</code> subsystem <code>' + i.subsystemVendor + ':' + i.subsystemDevice +
    '</code> class <code>' + i.classCode + '</code> revision <code>' + i.revision + '</code>';
  $('status').textContent = s.connected ? 'a client is connected' : 'no client connected';
  if (s.decoded !== undefined) $('decoded').textContent = s.decoded;
  const lines = [];
  for (let at = 0; at < s.config.length / 2; at += 16) {
    const bytes = s.config.slice(at * 2, at * 2 + 32).match(/../g).join(' ');
    lines.push(at.toString(16).padStart(3, '0') + ': ' + bytes);
  }
  $('config').textContent = lines.join('\\n');
  if (s.registers) {
    $('registers-section').hidden = false;
    $('registers').innerHTML = head(['region', 'offset', 'name', 'value', 'fields']) + s.registers.map((r) =>
      row([r.region, r.offset, r.name, r.value, r.fields.map((f) => f.name + '[' + f.bits + ']=' + f.value).join(' ')])).join('');
  }
  $('dma').innerHTML = s.dma.length === 0 ? '<tr><td class="off">none</td></tr>' : head(['iova', 'last byte', 'size', 'access', 'memory']) +
    s.dma.map((m) => row([m.iova, m.end, m.size, m.access, m.descriptor ? 'shared (descriptor)' : 'by message'])).join('');
  $('irqs').innerHTML = s.irqs.length === 0 ? '<tr><td class="off">none</td></tr>' : head(['type', 'vector', 'enabled', 'masked', 'raised', 'held']) +
    s.irqs.map((v) => row([v.index, v.vector, v.enabled ? 'yes' : 'no', v.masked ? 'yes' : 'no', v.raised, v.held], v.enabled ? '' : 'off')).join('');
}

let refresh;
function refreshSoon() {
  if (refresh) return;
  refresh = setTimeout(async () => {
    refresh = undefined;
    show(await (await fetch('/state')).json());
  }, 100);
}

const trace = $('trace');
const events = new EventSource('/events');
events.addEventListener('trace', (m) => {
  const e = JSON.parse(m.data);
  const line = document.createElement('div');
  line.textContent = e.text;
  if (e.error) line.className = 'error';
  trace.appendChild(line);
  while (trace.childNodes.length > 500) trace.removeChild(trace.firstChild);
  trace.scrollTop = trace.scrollHeight;
  refreshSoon();
});
events.addEventListener('state', refreshSoon);
fetch('/state').then((r) => r.json()).then(show);
</script>
</body>
</html>
`;
