// The record browser: pages of GET /v1/collections/{name}/records in key order, followed
// by their cursor (`next_after`), filtered on the server by the filter language; one
// record's details; upsert and delete for writers.

import { api, can, describe } from '../api.js';
import { announce, button, field, fmt, h, select, showError, table } from '../dom.js';
import { filterBuilder } from '../filter.js';

const PAGE_SIZES = ['25', '100', '500'];

/** Chooses a collection when the route names none. */
export async function collectionPicker(root, title, base) {
  const { collections } = await api('GET', '/v1/collections');
  root.replaceChildren(
    h('h1', null, title),
    collections.length === 0
      ? h('p', null, 'This key sees no collections yet.')
      : h('ul', null, collections.map((c) => h('li', null, h('a', { href: `#/${base}/${encodeURIComponent(c.name)}` }, c.name), ` — ${fmt.num(c.records)} records`))),
  );
}

function upsertForm(name, reload) {
  const id = h('input', { type: 'text', name: 'id', required: true, autocomplete: 'off' });
  const text = h('textarea', { name: 'text' });
  const meta = h('textarea', { name: 'metadata', class: 'mono', placeholder: '{"pos": "n"}' });
  const vector = h('textarea', { name: 'vector', class: 'mono', placeholder: 'empty: the server embeds the text (384-dim collections)' });
  const form = h(
    'form',
    { 'aria-labelledby': 'upsert-title' },
    field('Id', id),
    field('Text', text),
    field('Metadata (JSON object)', meta),
    field('Vector (JSON array)', vector),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Upsert record')),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const rec = { id: id.value };
    if (text.value) rec.text = text.value;
    try {
      if (meta.value.trim()) rec.metadata = JSON.parse(meta.value);
      if (vector.value.trim()) rec.vector = JSON.parse(vector.value);
    } catch (e) {
      showError(`Metadata and vector must be JSON: ${e.message}`);
      return;
    }
    try {
      const r = await api('POST', `/v1/collections/${encodeURIComponent(name)}/records`, { records: [rec] });
      announce(`Record ${rec.id} written (seq ${r.seq}).`);
      form.reset();
      await reload();
    } catch (e) {
      showError(describe(e));
    }
  });
  return [h('h2', { id: 'upsert-title' }, 'Upsert a record'), form];
}

/**
 * The files of an image or audio collection's records (GET …/records/{id}/media), fetched
 * with the session's token into blob: URLs (an <img> or <audio> cannot send the token),
 * released when the view that shows them is redrawn.
 */
function mediaFiles(enc) {
  const urls = { table: [], detail: [] };
  async function load(id, into, slot) {
    try {
      const blob = await api('GET', `/v1/collections/${enc}/records/${encodeURIComponent(id)}/media`, undefined, { accept: 'blob' });
      const url = URL.createObjectURL(blob);
      urls[slot].push(url);
      into.src = url;
    } catch (e) {
      into.replaceWith(h('span', { class: 'muted' }, describe(e)));
    }
  }
  const label = (r) => {
    const m = r.metadata.media;
    const bits = [m.format, m.width && m.height ? `${m.width}×${m.height}` : '', m.label || '', m.duration_secs ? `${m.duration_secs.toFixed(1)} s` : ''];
    return bits.filter(Boolean).join(', ');
  };
  return {
    release(slot) {
      for (const u of urls[slot]) URL.revokeObjectURL(u);
      urls[slot] = [];
    },
    thumbnail(r) {
      const img = h('img', { class: 'thumb', alt: `Image of record ${r.id}: ${label(r)}`, width: '64', height: '64' });
      load(r.id, img, 'table');
      return img;
    },
    view(r, slot) {
      const m = r.metadata.media;
      const audio = /wav|flac|mp3|ogg/i.test(m.format || '') || m.duration_secs !== undefined;
      const el = audio
        ? h('audio', { controls: true, preload: 'metadata', 'aria-label': `Audio of record ${r.id}: ${label(r)}` })
        : h('img', { class: 'media-view', alt: `Image of record ${r.id}: ${label(r)}` });
      load(r.id, el, slot);
      return h('figure', { class: 'media' }, el, h('figcaption', null, label(r)));
    },
  };
}

export async function render(root, { args, query }) {
  const name = args[0];
  if (!name) {
    await collectionPicker(root, 'Records', 'records');
    return;
  }
  const enc = encodeURIComponent(name);
  const info = await api('GET', `/v1/collections/${enc}`);
  const modality = info.encoder && info.encoder.modality !== 'text' ? info.encoder.modality : null;
  const media = mediaFiles(enc);
  const writable = can.write(name);
  // Cursors of the pages seen so far: cursors[i] is the `after` of page i.
  let cursors = [''];
  let page = 0;
  let filter = query.get('filter') || '';
  const size = select({ name: 'page-size' }, PAGE_SIZES, '100');
  const results = h('div', { 'aria-live': 'polite' });
  const detail = h('div');
  const prev = button('Previous page', () => load(page - 1), { class: 'secondary' });
  const next = button('Next page', () => load(page + 1), { class: 'secondary' });
  const first = button('First page', () => load(0), { class: 'secondary' });

  async function remove(id) {
    if (!window.confirm(`Delete record ${id}?`)) return;
    try {
      await api('DELETE', `/v1/collections/${enc}/records/${encodeURIComponent(id)}`);
      announce(`Record ${id} deleted.`);
      await load(page);
    } catch (e) {
      showError(describe(e));
    }
  }

  async function show(id) {
    try {
      const r = await api('GET', `/v1/collections/${enc}/records/${encodeURIComponent(id)}`);
      media.release('detail');
      detail.replaceChildren(
        h('h2', { id: 'record-title', tabindex: '-1' }, `Record ${r.id}`),
        ...(modality && r.metadata && r.metadata.media ? [media.view(r, 'detail')] : []),
        h('dl', null,
          h('dt', null, 'Text'), h('dd', null, r.text || '—'),
          h('dt', null, 'Metadata'), h('dd', null, h('pre', null, r.metadata ? JSON.stringify(r.metadata, null, 2) : '—')),
          h('dt', null, 'Vector'), h('dd', null, r.vector ? `${r.vector.length} dimensions: [${r.vector.slice(0, 8).map((x) => x.toFixed(4)).join(', ')}${r.vector.length > 8 ? ', …' : ''}]` : '—')),
      );
      detail.querySelector('h2').focus();
    } catch (e) {
      showError(describe(e));
    }
  }

  // A filtered request examines at most 10,000 records on the server, so one page may
  // take several requests: keep following the cursor until the page is full, the end is
  // reached, or MAX_FILL_MS have passed (then the page says so and "Next page" goes on).
  const MAX_FILL_MS = 3000;
  async function load(n) {
    const t0 = performance.now();
    const want = Number(size.value);
    const records = [];
    let after = cursors[n];
    let requests = 0;
    try {
      for (;;) {
        const r = await api('GET', `/v1/collections/${enc}/records`, undefined, { query: { after, limit: String(want - records.length), filter } });
        requests += 1;
        records.push(...r.records);
        after = r.next_after;
        if (!after || records.length >= want || performance.now() - t0 > MAX_FILL_MS) break;
      }
    } catch (e) {
      showError(describe(e));
      return;
    }
    showError(null);
    page = n;
    cursors = cursors.slice(0, n + 1);
    if (after) cursors.push(after);
    const ms = performance.now() - t0;
    const partial = after && records.length < want;
    media.release('table');
    const columns = [
      { title: 'Id', cell: (x) => button(x.id, () => show(x.id), { class: 'secondary', 'aria-label': `Show record ${x.id}` }) },
      ...(modality === 'image' ? [{ title: 'Image', cell: (x) => (x.metadata && x.metadata.media ? media.thumbnail(x) : '—') }] : []),
      { title: 'Text', clip: true, cell: (x) => fmt.clip(x.text) },
      { title: 'Metadata', clip: true, cell: (x) => h('code', null, fmt.clip(fmt.json(x.metadata))) },
    ];
    if (writable) columns.push({ title: 'Actions', cell: (x) => button('Delete', () => remove(x.id), { class: 'danger', 'aria-label': `Delete record ${x.id}` }) });
    results.replaceChildren(
      h(
        'p',
        { id: 'page-info' },
        `Page ${page + 1}: ${records.length} record${records.length === 1 ? '' : 's'}${filter ? ' matching the filter' : ''}` +
          `${partial ? '; more may follow (stopped looking at the time limit)' : after ? '; more follow' : '; last page'}` +
          ` (${fmt.ms(ms)}${requests > 1 ? `, ${requests} requests` : ''}).`,
      ),
      table(`Records of ${name}, key order`, columns, records),
    );
    prev.disabled = page === 0;
    first.disabled = page === 0;
    next.disabled = !after;
  }

  const fb = filterBuilder({
    legend: 'Filter records by metadata',
    onApply: (expr) => {
      filter = expr;
      cursors = [''];
      load(0);
    },
  });
  fb.set(filter);
  size.addEventListener('change', () => {
    cursors = [''];
    load(0);
  });
  root.replaceChildren(
    h('h1', null, `Records of ${name}`),
    h('p', { class: 'muted' }, `${fmt.num(info.records)} records in key order (a hash of the id). `, h('a', { href: `#/collections/${enc}` }, 'Collection details')),
    fb.element,
    h('div', { class: 'actions' }, field('Records per page', size), first, prev, next),
    results,
    detail,
    ...(writable ? upsertForm(name, () => load(page)) : []),
  );
  await load(0);
}
