// Collections: the list, create (writers), and one collection's statistics, segments and
// index settings, with drop (writers of that collection).

import { api, can, describe } from '../api.js';
import { announce, button, field, fmt, h, select, showError, stats, table } from '../dom.js';

function createForm() {
  const name = h('input', { type: 'text', name: 'name', required: true, autocomplete: 'off' });
  const dim = h('input', { type: 'number', name: 'dim', required: true, min: '1', max: '65536', value: '384', class: 'narrow' });
  const metric = select({ name: 'metric' }, ['cosine', 'dot', 'l2'], 'cosine');
  const quant = select({ name: 'quantization' }, [['none', 'none (f32)'], 'int8', 'rabitq4', 'rabitq1'], 'none');
  const m = h('input', { type: 'number', name: 'm', min: '4', max: '64', placeholder: '16', class: 'narrow' });
  const efc = h('input', { type: 'number', name: 'ef_construction', min: '8', max: '2000', placeholder: '200', class: 'narrow' });
  const form = h(
    'form',
    { class: 'inline', 'aria-labelledby': 'create-title' },
    field('Name', name, '1-64 of A-Z a-z 0-9 _ -'),
    field('Dimension', dim, '384 for the built-in embedder'),
    field('Metric', metric),
    field('Quantization', quant),
    field('HNSW m', m),
    field('ef construction', efc),
    h('button', { type: 'submit' }, 'Create collection'),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), dim: Number(dim.value), metric: metric.value, quantization: quant.value };
    if (m.value) body.m = Number(m.value);
    if (efc.value) body.ef_construction = Number(efc.value);
    try {
      await api('POST', '/v1/collections', body);
      announce(`Collection ${body.name} created.`);
      location.hash = `#/collections/${encodeURIComponent(body.name)}`;
    } catch (e) {
      showError(describe(e));
    }
  });
  return [h('h2', { id: 'create-title' }, 'Create a collection'), form];
}

/** The table of `collections`; `full` adds the storage columns. */
export function collectionsTable(collections, full) {
  const columns = [
    { title: 'Name', cell: (c) => h('a', { href: `#/collections/${encodeURIComponent(c.name)}` }, c.name) },
    { title: 'Records', num: true, cell: (c) => fmt.num(c.records) },
    { title: 'Dim', num: true, cell: (c) => String(c.dim) },
    { title: 'Metric', cell: (c) => c.metric },
  ];
  if (full) {
    columns.push(
      { title: 'Quantization', cell: (c) => c.quantization },
      { title: 'Segments', num: true, cell: (c) => fmt.num(c.segments) },
      { title: 'Segment bytes', num: true, cell: (c) => fmt.bytes(c.segment_bytes) },
      { title: 'Memtable', num: true, cell: (c) => fmt.num(c.memtable_entries) },
      { title: 'WAL', num: true, cell: (c) => fmt.bytes(c.wal_bytes) },
    );
  }
  return table('Collections this key can see', columns, collections);
}

async function list(root) {
  const { collections } = await api('GET', '/v1/collections');
  root.replaceChildren(h('h1', null, 'Collections'), collectionsTable(collections, true), ...(can.write() ? createForm() : []));
}

async function detail(root, name) {
  const c = await api('GET', `/v1/collections/${encodeURIComponent(name)}`);
  const enc = encodeURIComponent(name);
  const parts = [
    h('h1', null, `Collection ${c.name}`),
    h('p', { class: 'actions' }, h('a', { href: `#/records/${enc}` }, 'Browse records'), h('a', { href: `#/search/${enc}` }, 'Search'), h('a', { href: '#/collections' }, 'All collections')),
    stats(
      [
        ['Records', fmt.num(c.records)],
        ['Dimension', String(c.dim)],
        ['Metric', c.metric],
        ['Last write (seq)', fmt.num(c.last_seq)],
      ],
      'Collection',
    ),
    h('h2', null, 'Storage'),
    stats(
      [
        ['Segments', fmt.num(c.segments)],
        ['Segment bytes', fmt.bytes(c.segment_bytes)],
        ['Memtable entries', fmt.num(c.memtable_entries)],
        ['Write-ahead log', fmt.bytes(c.wal_bytes)],
      ],
      'Storage',
    ),
    h('p', { class: 'muted' }, 'Immutable segments are searched through their index (HNSW, BM25, payload index, built on first search); memtable entries are scanned exactly.'),
    h('h2', null, 'Index settings'),
    stats(
      [
        ['Quantization', c.quantization],
        ['HNSW m', String(c.m)],
        ['ef construction', String(c.ef_construction)],
      ],
      'Index settings',
    ),
  ];
  if (can.write(c.name)) {
    parts.push(
      h('h2', null, 'Drop'),
      h('p', null, 'Dropping deletes every record of the collection and its kernels. It cannot be undone.'),
      button(`Drop collection ${c.name}`, async () => {
        if (!window.confirm(`Drop collection ${c.name} and all ${c.records} records?`)) return;
        try {
          await api('DELETE', `/v1/collections/${enc}`);
          announce(`Collection ${c.name} dropped.`);
          location.hash = '#/collections';
        } catch (e) {
          showError(describe(e));
        }
      }, { class: 'danger' }),
    );
  }
  root.replaceChildren(...parts);
}

export async function render(root, { args }) {
  if (args[0]) await detail(root, args[0]);
  else await list(root);
}
