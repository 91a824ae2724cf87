// The search playground: a text or vector query, vector / keyword / hybrid ranking, a
// filter, k and ef; hits with scores, the engine's and the round trip's latency; and the
// same query run as exact search, with the recall@k of the approximate answer.

import { api, describe } from '../api.js';
import { fmt, h, field, select, showError, table, announce } from '../dom.js';
import { filterBuilder } from '../filter.js';
import { collectionPicker } from './records.js';

/** Recall@k of `approx` against the exact answer: the share of exact ids found. */
export function recall(approx, exact) {
  if (exact.length === 0) return approx.length === 0 ? 1 : 0;
  const got = new Set(approx.map((x) => x.id));
  return exact.filter((x) => got.has(x.id)).length / exact.length;
}

async function timed(body, name) {
  const t0 = performance.now();
  const r = await api('POST', `/v1/collections/${encodeURIComponent(name)}/search`, body);
  return { ...r, roundtrip: performance.now() - t0 };
}

export async function render(root, { args }) {
  const name = args[0];
  if (!name) {
    await collectionPicker(root, 'Search', 'search');
    return;
  }
  const info = await api('GET', `/v1/collections/${encodeURIComponent(name)}`);
  const by = { text: h('input', { type: 'radio', name: 'query-by', value: 'text', checked: true }), vector: h('input', { type: 'radio', name: 'query-by', value: 'vector' }) };
  const text = h('textarea', { name: 'text', placeholder: 'a domesticated carnivorous mammal' });
  const vector = h('textarea', { name: 'vector', class: 'mono', placeholder: `[${Array.from({ length: Math.min(info.dim, 4) }, () => '0.1').join(', ')}${info.dim > 4 ? ', …' : ''}] (${info.dim} numbers)` });
  const mode = select({ name: 'mode' }, [['vector', 'vector (nearest neighbours)'], ['keyword', 'keyword (BM25)'], ['hybrid', 'hybrid (fused)']], 'vector');
  const k = h('input', { type: 'number', name: 'k', min: '1', value: '10', class: 'narrow', required: true });
  const ef = h('input', { type: 'number', name: 'ef', min: '1', placeholder: '128', class: 'narrow' });
  const exact = h('input', { type: 'checkbox', name: 'exact-compare', checked: true });
  const out = h('div', { id: 'search-results' });

  function queryFields() {
    const useText = by.text.checked;
    text.closest('.field').hidden = !useText;
    vector.closest('.field').hidden = useText;
    exact.disabled = mode.value === 'keyword';
  }

  async function run() {
    const body = { k: Number(k.value), mode: mode.value };
    if (ef.value) body.ef = Number(ef.value);
    const filter = fb.value();
    if (filter) body.filter = filter;
    if (by.text.checked) {
      body.text = text.value;
    } else {
      try {
        body.vector = JSON.parse(vector.value);
      } catch (e) {
        showError(`The vector must be a JSON array of ${info.dim} numbers: ${e.message}`);
        return;
      }
    }
    showError(null);
    out.replaceChildren(h('p', { class: 'muted' }, 'Searching…'));
    let approx;
    let truth = null;
    try {
      approx = await timed(body, name);
      if (exact.checked && !exact.disabled) truth = await timed({ ...body, exact: true }, name);
    } catch (e) {
      out.replaceChildren();
      showError(describe(e));
      return;
    }
    const exactIds = truth ? new Set(truth.hits.map((x) => x.id)) : null;
    const parts = [
      h('h2', { id: 'results-title', tabindex: '-1' }, `${approx.hits.length} hit${approx.hits.length === 1 ? '' : 's'}`),
      h('p', { id: 'latency' }, `Engine ${fmt.ms(approx.took_ms)}, round trip ${fmt.ms(approx.roundtrip)}.`),
    ];
    if (truth) {
      const r = recall(approx.hits, truth.hits);
      parts.push(
        h('p', { id: 'recall', class: r === 1 ? 'good' : 'bad' }, `Recall@${body.k} against exact search: ${r.toFixed(3)} (${Math.round(r * truth.hits.length)} of ${truth.hits.length}); exact search took ${fmt.ms(truth.took_ms)}.`),
      );
    }
    const columns = [
      { title: 'Rank', num: true, cell: (x) => String(approx.hits.indexOf(x) + 1) },
      { title: 'Id', cell: (x) => x.id },
      { title: 'Score', num: true, cell: (x) => x.score.toFixed(4) },
      { title: 'Text', clip: true, cell: (x) => fmt.clip(x.text) },
      { title: 'Metadata', clip: true, cell: (x) => h('code', null, fmt.clip(fmt.json(x.metadata))) },
    ];
    if (exactIds) columns.push({ title: 'In exact top-k', cell: (x) => (exactIds.has(x.id) ? 'yes' : 'no') });
    parts.push(table(`Hits (${body.mode})`, columns, approx.hits, (x) => (exactIds ? { class: exactIds.has(x.id) ? 'match' : 'miss' } : null)));
    if (truth) {
      parts.push(
        table('Exact search (ground truth)', [
          { title: 'Rank', num: true, cell: (x) => String(truth.hits.indexOf(x) + 1) },
          { title: 'Id', cell: (x) => x.id },
          { title: 'Score', num: true, cell: (x) => x.score.toFixed(4) },
        ], truth.hits),
      );
    }
    out.replaceChildren(...parts);
    announce(`${approx.hits.length} hits.`);
  }

  const fb = filterBuilder({
    legend: 'Filter (metadata)',
    onApply: (expr) => announce(expr ? `Filter set for the next search: ${expr}` : 'Filter cleared.'),
  });
  const form = h(
    'form',
    { 'aria-labelledby': 'query-title' },
    h('fieldset', null, h('legend', null, 'Query by'), h('div', { class: 'actions' }, field('Text', by.text), field('Vector', by.vector))),
    field('Query text', text),
    field('Query vector (JSON array)', vector, `${info.dim} numbers`),
    h('div', { class: 'actions' }, field('Mode', mode), field('k (results)', k), field('ef (beam width)', ef, 'default 128'), field('Compare with exact search (recall@k)', exact)),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Search')),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    run();
  });
  for (const el of [by.text, by.vector, mode]) el.addEventListener('change', queryFields);
  root.replaceChildren(
    h('h1', null, `Search ${name}`),
    h('p', { class: 'muted' }, `${fmt.num(info.records)} records, ${info.dim} dimensions, ${info.metric}. `, h('a', { href: `#/collections/${encodeURIComponent(name)}` }, 'Collection details')),
    fb.element,
    h('h2', { id: 'query-title' }, 'Query'),
    form,
    out,
  );
  queryFields();
}
