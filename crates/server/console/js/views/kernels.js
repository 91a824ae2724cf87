// Knowledge kernels: the list, a build (writers of the collection), one kernel's progress
// and then its signed manifest with the compression report and recall curve, download
// (the signed file, fetched with the session's token), verify (the downloaded file checked
// in the browser under the server's published key: signature, hashes, layout), query
// (POST /v1/kernels/{id}/query) and delete. A running build's progress is followed over
// server-sent events (GET /v1/kernels/{id}/events).

import { api, can, current, describe } from '../api.js';
import { announce, button, field, fmt, h, select, showError, stats, table } from '../dom.js';
import { verifyKernel } from '../kernel-verify.js';
import { follow } from '../sse.js';
import { barChart } from './usage.js';

function progressCell(k) {
  if (k.state !== 'running') return h('span', { class: k.state === 'succeeded' ? 'good' : 'bad' }, k.state);
  return h('span', null, h('progress', { max: '1', value: String(k.progress), 'aria-label': `Build of ${k.id}` }), ` ${k.stage || ''} ${Math.round(k.progress * 100)}%`);
}

function buildForm(collections) {
  const writable = collections.filter((c) => can.write(c.name)).map((c) => c.name);
  if (writable.length === 0) return [];
  const collection = select({ name: 'kernel-collection' }, writable, writable[0]);
  const quant = select({ name: 'kernel-quantization' }, [['rabitq4', 'RaBitQ 4-bit'], ['rabitq1', 'RaBitQ 1-bit'], 'int8', ['none', 'none (f32)']], 'rabitq4');
  const index = select({ name: 'kernel-index' }, [['ivf', 'IVF lists'], ['hnsw', 'HNSW graph']], 'ivf');
  const dedup = h('input', { type: 'checkbox', name: 'dedup', checked: true });
  const threshold = h('input', { type: 'number', name: 'dedup-threshold', min: '-1', max: '1', step: '0.01', value: '0.97', class: 'narrow' });
  const keepText = h('input', { type: 'checkbox', name: 'keep-text', checked: true });
  const form = h('form', { class: 'inline', 'aria-labelledby': 'build-title' },
    field('Collection', collection),
    field('Quantization', quant),
    field('Index', index),
    field('Consolidate near-duplicates', dedup),
    field('Similarity threshold', threshold),
    field('Keep text', keepText),
    h('button', { type: 'submit' }, 'Build kernel'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { collection: collection.value, quantization: quant.value, index: index.value, dedup: dedup.checked, keep_text: keepText.checked };
    if (dedup.checked) body.dedup_threshold = Number(threshold.value);
    try {
      const k = await api('POST', '/v1/kernels', body);
      announce(`Building kernel ${k.id}.`);
      location.hash = `#/kernels/${encodeURIComponent(k.id)}`;
    } catch (e) {
      showError(describe(e));
    }
  });
  return [h('h2', { id: 'build-title' }, 'Build a kernel'), form];
}

async function list(root) {
  const [{ kernels }, { collections }] = await Promise.all([api('GET', '/v1/kernels'), api('GET', '/v1/collections')]);
  root.replaceChildren(
    h('h1', null, 'Kernels'),
    table('Kernels of the collections this key can see, newest first', [
      { title: 'Id', cell: (k) => h('a', { href: `#/kernels/${encodeURIComponent(k.id)}` }, k.id) },
      { title: 'Collection', cell: (k) => `${k.collection}${k.orphaned ? ' (dropped)' : ''}` },
      { title: 'State', cell: progressCell },
      { title: 'Rows', num: true, cell: (k) => fmt.num(k.rows) },
      { title: 'Ids', num: true, cell: (k) => fmt.num(k.ids) },
      { title: 'Bytes', num: true, cell: (k) => fmt.bytes(k.bytes) },
      { title: 'Started', cell: (k) => fmt.time(k.created_at) },
    ], kernels),
    ...buildForm(collections),
  );
}

/** The kernel file, fetched with the session's token (a header, so not a plain link). */
async function fetchKernel(k) {
  const resp = await fetch(`/v1/kernels/${encodeURIComponent(k.id)}/download`, { headers: { Authorization: `Bearer ${current().token}` }, cache: 'no-store' });
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    showError(`Download refused: ${body.message || resp.status}`);
    return null;
  }
  return resp;
}

async function download(k) {
  // The download needs the token in a header, so it is fetched and handed over as a blob.
  const resp = await fetchKernel(k);
  if (!resp) return;
  const url = URL.createObjectURL(await resp.blob());
  const a = h('a', { href: url, download: `${k.collection}-${k.id}.kernel` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  announce(`Kernel ${k.id} downloaded (${fmt.bytes(k.bytes)}).`);
}

/** A serialized enum for people: `"int8"`; `{"kind": "ivf", "nlist": 8, …}` as `ivf (nlist 8, …)`. */
function kind(v) {
  if (!v || typeof v !== 'object') return String(v);
  const { kind: name, ...rest } = v;
  const params = Object.entries(rest).map(([k, x]) => `${k} ${x}`).join(', ');
  return `${name || JSON.stringify(v)}${params ? ` (${params})` : ''}`;
}

function report(k) {
  const m = k.manifest;
  const r = m.report;
  const parts = [
    h('h2', null, 'Manifest'),
    stats([
      ['Rows', fmt.num(m.rows)],
      ['Original ids', fmt.num(m.ids)],
      ['File', fmt.bytes(m.file_bytes)],
      ['Quantization', kind(m.quantization)],
      ['Index', kind(m.index)],
      ['Text kept', m.keep_text ? 'yes' : 'no'],
      ['Signing key id', h('code', null, m.key_id)],
      ['Expires', m.expires ? fmt.time(m.expires * 1000) : 'never'],
    ], 'Manifest'),
  ];
  if (r) {
    parts.push(
      h('h2', null, 'Compression report'),
      stats([
        ['Records in', fmt.num(r.records_in)],
        ['Rows out', fmt.num(r.rows_out)],
        ['Consolidated', fmt.num(r.consolidated)],
        ['Raw bytes', fmt.bytes(r.raw.total)],
        ['Raw ÷ file bytes', m.file_bytes ? `${(r.raw.total / m.file_bytes).toFixed(2)}×` : '—'],
        ['Build', `${r.build_secs.toFixed(2)} s`],
      ], 'Compression report'),
    );
    if (r.eval) {
      const e = r.eval;
      parts.push(
        h('p', { id: 'kernel-recall' }, `Recall@${e.k} against exact search over the original records: ${e.recall.toFixed(3)} at ${e.param} ${e.chosen} (the default), over ${e.queries} queries (${e.source}).`),
        h('figure', { id: 'recall-curve' },
          barChart(`Recall@${e.k} by ${e.param}`, e.curve.map(([p, rec]) => ({ label: `${e.param} ${p}`, value: rec })), (v) => v.toFixed(3)),
          h('figcaption', null, `Recall@${e.k} at each ${e.param} tried: more probing costs query time, not file size.`)),
      );
    }
  }
  return parts;
}

/** Verify: the file as a device gets it, checked here under the server's published key. */
function verifyPanel(k) {
  const out = h('div', { id: 'kernel-verify', 'aria-live': 'polite' });
  const run = button('Verify signature and hashes', async () => {
    out.replaceChildren(h('p', { class: 'muted' }, 'Downloading and checking…'));
    try {
      const [resp, key] = await Promise.all([fetchKernel(k), api('GET', '/v1/kernel-signing-key')]);
      if (!resp) {
        out.replaceChildren();
        return;
      }
      const r = await verifyKernel(await resp.arrayBuffer(), key, resp.headers.get('etag'));
      out.replaceChildren(
        h('p', { class: r.ok ? 'good' : 'bad', id: 'kernel-verdict' }, r.ok ? `Verified: kernel ${k.id} is signed by the server's key ${key.key_id} and intact.` : `Refused: ${r.problem}`),
        h('ul', null, r.checks.map((c) => h('li', null, c))),
      );
      announce(r.ok ? 'Kernel verified.' : 'Kernel refused.');
    } catch (e) {
      out.replaceChildren();
      showError(describe(e));
    }
  }, { id: 'kernel-verify-run' });
  return [
    h('h2', null, 'Verify'),
    h('p', { class: 'muted' }, 'Downloads the signed file and checks it in this browser as a device would: header, the manifest\'s ed25519 signature under GET /v1/kernel-signing-key, every section\'s SHA-256, padding, length and expiry.'),
    h('div', { class: 'actions' }, run),
    out,
  ];
}

/** Query: text (embedded by the server) or a vector, k and probe. */
function queryPanel(k) {
  const m = k.manifest;
  const text = h('textarea', { name: 'kernel-query-text', rows: '2', placeholder: 'text to search for (or a JSON array of numbers)' });
  const topk = h('input', { type: 'number', name: 'kernel-query-k', min: '1', value: '5', class: 'narrow', required: true });
  const probe = h('input', { type: 'number', name: 'kernel-query-probe', min: '1', class: 'narrow' });
  const out = h('div', { id: 'kernel-hits' });
  const form = h('form', { 'aria-labelledby': 'kernel-query-title', id: 'kernel-query' },
    field('Query', text, `Text, or a vector of ${m.dim} numbers as JSON`),
    h('div', { class: 'actions' }, field('k (rows)', topk), field(m.index && m.index.kind === 'hnsw' ? 'Beam width (ef)' : 'Lists probed', probe, 'default: the kernel\'s own'), h('button', { type: 'submit' }, 'Query kernel')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const q = text.value.trim();
    const body = { k: Number(topk.value) };
    if (probe.value) body.probe = Number(probe.value);
    if (q.startsWith('[')) {
      try {
        body.vector = JSON.parse(q);
      } catch (e) {
        showError(`The vector must be a JSON array of ${m.dim} numbers: ${e.message}`);
        return;
      }
    } else body.text = q;
    const t0 = performance.now();
    try {
      const r = await api('POST', `/v1/kernels/${encodeURIComponent(k.id)}/query`, body);
      showError(null);
      out.replaceChildren(
        h('p', { id: 'kernel-query-latency' }, `${r.hits.length} row${r.hits.length === 1 ? '' : 's'}: search ${fmt.ms(r.took_ms)}, round trip ${fmt.ms(performance.now() - t0)}.`),
        table('Rows, best first (a row stands for its ids: the representative, then the near-duplicates folded into it)', [
          { title: 'Rank', num: true, cell: (x) => String(r.hits.indexOf(x) + 1) },
          { title: 'Ids', clip: true, cell: (x) => x.ids.join(', ') },
          { title: 'Score', num: true, cell: (x) => x.score.toFixed(4) },
          { title: 'Text', clip: true, cell: (x) => fmt.clip(x.text) },
          { title: 'Metadata', clip: true, cell: (x) => h('code', null, fmt.clip(fmt.json(x.metadata))) },
        ], r.hits),
      );
      announce(`${r.hits.length} rows.`);
    } catch (e) {
      out.replaceChildren();
      showError(describe(e));
    }
  });
  return [h('h2', { id: 'kernel-query-title' }, 'Query'), form, out];
}

async function detail(root, id) {
  const k = await api('GET', `/v1/kernels/${encodeURIComponent(id)}`);
  const writable = can.write(k.collection);
  const parts = [
    h('h1', null, `Kernel ${k.id}`),
    h('p', { class: 'actions' }, h('a', { href: '#/kernels' }, 'All kernels'), h('a', { href: `#/collections/${encodeURIComponent(k.collection)}` }, `Collection ${k.collection}`)),
    h('p', { id: 'kernel-state', 'aria-live': 'polite' }, 'State: ', progressCell(k), k.error ? ` — ${k.error}` : ''),
  ];
  if (k.state === 'succeeded' && k.manifest) {
    parts.push(
      h('div', { class: 'actions' }, button('Download kernel', () => download(k)), k.orphaned || current().collections ? null : h('a', { href: `#/chat?kernel=${encodeURIComponent(k.id)}` }, 'Chat with this kernel')),
      ...report(k),
    );
    if (!k.orphaned) parts.push(...verifyPanel(k), ...queryPanel(k));
  }
  if (writable && k.state !== 'running') {
    parts.push(h('h2', null, 'Delete'), button(`Delete kernel ${k.id}`, async () => {
      if (!window.confirm(`Delete kernel ${k.id}?`)) return;
      try {
        await api('DELETE', `/v1/kernels/${encodeURIComponent(k.id)}`);
        announce(`Kernel ${k.id} deleted.`);
        location.hash = '#/kernels';
      } catch (e) {
        showError(describe(e));
      }
    }, { class: 'danger' }));
  }
  root.replaceChildren(...parts);
  if (k.state === 'running') {
    // Progress arrives as server-sent events while this view is shown; the finished
    // kernel (the last event) replaces the progress with its report.
    follow(`/v1/kernels/${encodeURIComponent(id)}/events`, {
      view: root,
      until: (e) => e.data && e.data.state !== 'running',
      onEvent: async (e) => {
        const now = e.data;
        if (!now || typeof now !== 'object' || now.id !== id || !root.isConnected) return;
        if (now.state === 'running') {
          const el = root.querySelector('#kernel-state');
          if (el) el.replaceChildren('State: ', progressCell(now));
          return;
        }
        try {
          await detail(root, id);
          announce(`Kernel ${id} ${now.state}.`);
        } catch (err) {
          showError(describe(err));
        }
      },
    });
  }
}

export async function render(root, { args }) {
  if (args[0]) await detail(root, args[0]);
  else await list(root);
}
