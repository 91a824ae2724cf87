// The 2-D map of a collection: GET /v1/collections/{name}/map (a deterministic sample
// projected on the server onto its first two principal components) drawn as an SVG
// scatter plot, coloured by a metadata field chosen here. Hovering a point, or moving
// through the points with the arrow keys once the plot has focus, shows its id, value and
// text; the same points are in a table for screen readers.

import { api } from '../api.js';
import { fmt, h, s, field, select, table, announce } from '../dom.js';
import { collectionPicker } from './records.js';

/** Okabe–Ito colours (distinguishable with colour-blindness); the last is "other". */
const PALETTE = ['#0072b2', '#e69f00', '#009e73', '#d55e00', '#cc79a7', '#56b4e9', '#8c6d00', '#000000'];
const OTHER = '#8c959f';
const WIDTH = 720;
const HEIGHT = 440;
const PAD = 16;

/** Top-level metadata fields of a few records (the choices for colouring). */
async function metadataFields(name) {
  const page = await api('GET', `/v1/collections/${encodeURIComponent(name)}/records`, undefined, { query: { limit: 50 } });
  const names = new Set();
  for (const r of page.records) for (const k of Object.keys(r.metadata || {})) names.add(k);
  return [...names].sort();
}

function label(v) {
  if (v === null || v === undefined) return '(none)';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/** Colour per value: the most frequent values get their own, the rest share "other". */
function colours(points) {
  const counts = new Map();
  for (const p of points) {
    const k = label(p.value);
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const own = ranked.length > PALETTE.length ? PALETTE.length - 1 : ranked.length;
  const of = new Map(ranked.slice(0, own).map(([k], i) => [k, PALETTE[i]]));
  const legend = ranked.slice(0, own).map(([k, n]) => ({ label: k, colour: of.get(k), count: n }));
  const rest = ranked.slice(own).reduce((n, [, c]) => n + c, 0);
  if (rest > 0) legend.push({ label: 'other values', colour: OTHER, count: rest });
  return { colour: (p) => of.get(label(p.value)) || OTHER, legend };
}

function scatter(m, colourBy) {
  const pts = m.points;
  const xs = pts.map((p) => p.x);
  const ys = pts.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => PAD + ((x - x0) / (x1 - x0 || 1)) * (WIDTH - 2 * PAD);
  const sy = (y) => HEIGHT - PAD - ((y - y0) / (y1 - y0 || 1)) * (HEIGHT - 2 * PAD);
  const { colour, legend } = colourBy ? colours(pts) : { colour: () => PALETTE[0], legend: [] };
  const r = pts.length > 2000 ? 2.5 : 3.5;
  const detail = h('div', { class: 'map-detail', id: 'map-detail', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Hover over a point, or focus the map and use the arrow keys.'));
  const marker = s('circle', { class: 'map-marker', r: r + 4, cx: -20, cy: -20 });
  const dots = pts.map((p, i) => s('circle', { cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r, fill: colour(p), 'data-i': i }));
  const hint = h('small', { id: 'map-hint' }, 'Arrow keys move from point to point in order along the first axis; Home and End jump to the ends.');
  const order = pts.map((_, i) => i).sort((a, b) => pts[a].x - pts[b].x || pts[a].y - pts[b].y);
  let at = -1;

  function show(i) {
    const p = pts[i];
    marker.setAttribute('cx', sx(p.x).toFixed(1));
    marker.setAttribute('cy', sy(p.y).toFixed(1));
    detail.replaceChildren(
      h('p', null, h('strong', null, p.id), colourBy ? ` · ${colourBy}: ${label(p.value)}` : ''),
      h('p', { class: 'clip' }, p.text ? p.text : h('span', { class: 'muted' }, 'no text')),
    );
  }

  const svg = s(
    'svg',
    {
      class: 'map',
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      width: WIDTH,
      height: HEIGHT,
      tabindex: '0',
      role: 'group',
      'aria-roledescription': 'scatter plot',
      'aria-label': `Map of ${pts.length} records of ${m.collection}${colourBy ? `, coloured by ${colourBy}` : ''}`,
      'aria-describedby': 'map-hint',
      id: 'map-plot',
    },
    s('rect', { class: 'map-frame', x: 0.5, y: 0.5, width: WIDTH - 1, height: HEIGHT - 1 }),
    s('g', { 'aria-hidden': 'true' }, dots, marker),
  );
  svg.addEventListener('mouseover', (ev) => {
    const i = ev.target.getAttribute && ev.target.getAttribute('data-i');
    if (i !== null && i !== undefined) show(Number(i));
  });
  svg.addEventListener('keydown', (ev) => {
    if (pts.length === 0) return;
    const pos = order.indexOf(at);
    let next = null;
    if (ev.key === 'ArrowRight' || ev.key === 'ArrowDown') next = pos < 0 ? 0 : Math.min(order.length - 1, pos + 1);
    else if (ev.key === 'ArrowLeft' || ev.key === 'ArrowUp') next = pos < 0 ? 0 : Math.max(0, pos - 1);
    else if (ev.key === 'Home') next = 0;
    else if (ev.key === 'End') next = order.length - 1;
    if (next === null) return;
    ev.preventDefault();
    at = order[next];
    show(at);
  });
  const legendList = legend.length
    ? h(
        'ul',
        { class: 'legend', 'aria-label': `Colours by ${colourBy}` },
        legend.map((l) =>
          h('li', null, s('svg', { width: 14, height: 14, 'aria-hidden': 'true' }, s('rect', { width: 14, height: 14, rx: 3, fill: l.colour })), ` ${fmt.clip(l.label, 40)} (${fmt.num(l.count)})`),
        ),
      )
    : null;
  return h('div', { class: 'map-wrap' }, svg, h('div', { class: 'map-side' }, hint, legendList, detail));
}

export async function render(root, { args, query, rerender }) {
  const name = args[0];
  if (!name) {
    await collectionPicker(root, 'Map', 'map');
    return;
  }
  const colourBy = query.get('color') || '';
  const sample = Number(query.get('sample') || 1000);
  const fields = await metadataFields(name).catch(() => []);
  if (colourBy && !fields.includes(colourBy)) fields.push(colourBy);
  const colourSel = select({ name: 'color-by' }, [['', '(none)'], ...fields], colourBy);
  const sampleIn = h('input', { type: 'number', name: 'sample', min: '1', max: '5000', value: String(sample), class: 'narrow', required: true });
  const form = h(
    'form',
    { class: 'inline', 'aria-labelledby': 'map-form-title' },
    field('Colour by metadata field', colourSel),
    field('Sample size', sampleIn, 'At most 5,000 records, drawn the same way every time.'),
    h('button', { type: 'submit' }, 'Draw map'),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (colourSel.value) q.set('color', colourSel.value);
    q.set('sample', sampleIn.value);
    const target = `#/map/${encodeURIComponent(name)}?${q}`;
    if (location.hash === target) rerender();
    else location.hash = target;
  });
  const m = await api('GET', `/v1/collections/${encodeURIComponent(name)}/map`, undefined, {
    query: { sample, color_by: colourBy || undefined },
  });
  const pct = (x) => `${(x * 100).toFixed(1)}%`;
  const tableRows = m.points;
  root.replaceChildren(
    h('h1', null, `Map of ${name}`),
    h('h2', { id: 'map-form-title', class: 'visually-hidden' }, 'Map settings'),
    form,
    h(
      'p',
      { class: 'muted', id: 'map-summary' },
      `${fmt.num(m.points.length)} of ${fmt.num(m.examined)} records${m.truncated ? ' (first million examined)' : ''}, projected on their two principal components (${pct(m.explained[0])} and ${pct(m.explained[1])} of the variance).`,
    ),
    m.points.length === 0 ? h('p', null, 'This collection has no records to map.') : scatter(m, colourBy),
    h(
      'details',
      { class: 'map-table' },
      h('summary', null, 'The points as a table'),
      table(
        `Points of the map of ${name}`,
        [
          { title: 'Id', cell: (p) => p.id },
          { title: 'x', num: true, cell: (p) => p.x.toFixed(3) },
          { title: 'y', num: true, cell: (p) => p.y.toFixed(3) },
          ...(colourBy ? [{ title: colourBy, cell: (p) => label(p.value) }] : []),
          { title: 'Text', clip: true, cell: (p) => fmt.clip(p.text || '', 120) },
        ],
        tableRows,
      ),
    ),
  );
  announce(`Map of ${m.points.length} records drawn.`);
}
