// Usage per key (admin): GET /v1/usage as a bar chart drawn in SVG (attributes and the
// stylesheet only: no inline styles) with the same figures in a table.

import { api } from '../api.js';
import { fmt, h, s, field, select, table } from '../dom.js';

const MEASURES = [
  ['requests', 'Requests'],
  ['records_written', 'Records written'],
  ['texts_embedded', 'Texts embedded'],
  ['bytes_stored', 'Bytes stored'],
  ['llm_tokens', 'LLM tokens'],
];

/** A horizontal bar chart of `rows` (`{label, value}`), labelled for assistive technology. */
export function barChart(title, rows, format) {
  const barH = 22;
  const gap = 8;
  const labelW = 220;
  const width = 720;
  const plotW = width - labelW - 110;
  const max = Math.max(1, ...rows.map((r) => r.value));
  const height = Math.max(1, rows.length) * (barH + gap) + gap;
  const id = `chart-${Math.random().toString(36).slice(2, 8)}`;
  return s(
    'svg',
    { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': id, width, height },
    s('title', { id }, `${title}: ${rows.map((r) => `${r.label} ${format(r.value)}`).join('; ') || 'no data'}`),
    s('line', { class: 'axis', x1: labelW, x2: labelW, y1: 0, y2: height }),
    rows.map((r, i) => {
      const y = gap + i * (barH + gap);
      const w = Math.max(1, (r.value / max) * plotW);
      return s(
        'g',
        null,
        s('text', { class: 'label', x: labelW - 8, y: y + barH * 0.7, 'text-anchor': 'end' }, fmt.clip(r.label, 32)),
        s('rect', { class: 'bar', x: labelW, y, width: w.toFixed(1), height: barH, rx: 2 }, s('title', null, `${r.label}: ${format(r.value)}`)),
        s('text', { class: 'value', x: labelW + w + 6, y: y + barH * 0.7 }, format(r.value)),
      );
    }),
  );
}

export async function render(root) {
  const [usage, keys] = await Promise.all([api('GET', '/v1/usage'), api('GET', '/v1/keys')]);
  const names = new Map(keys.keys.map((k) => [k.id, k.name]));
  const measure = select({ name: 'measure' }, MEASURES, 'requests');
  const chart = h('figure', { id: 'usage-chart' });
  function draw() {
    const m = measure.value;
    const label = MEASURES.find(([v]) => v === m)[1];
    const format = m === 'bytes_stored' ? fmt.bytes : fmt.num;
    const rows = usage.keys
      .map((u) => ({ label: `${names.get(u.key_id) || '?'} (${u.key_id})`, value: u[m] }))
      .sort((a, b) => b.value - a.value);
    chart.replaceChildren(barChart(`${label} per key`, rows, format), h('figcaption', null, `${label} per key since the key was created.`));
  }
  measure.addEventListener('change', draw);
  draw();
  root.replaceChildren(
    h('h1', null, 'Usage per key'),
    h('form', { class: 'inline', 'aria-label': 'Chart settings' }, field('Measure', measure)),
    chart,
    table('Usage per key', [
      { title: 'Key', cell: (u) => h('code', null, u.key_id) },
      { title: 'Name', cell: (u) => names.get(u.key_id) || '—' },
      { title: 'Requests', num: true, cell: (u) => fmt.num(u.requests) },
      { title: 'Records written', num: true, cell: (u) => fmt.num(u.records_written) },
      { title: 'Texts embedded', num: true, cell: (u) => fmt.num(u.texts_embedded) },
      { title: 'Bytes stored', num: true, cell: (u) => fmt.bytes(u.bytes_stored) },
      { title: 'LLM tokens', num: true, cell: (u) => fmt.num(u.llm_tokens) },
    ], usage.keys),
  );
}
