// LLM programs (keys of all collections: programs are server-wide): the list, registering
// one from JSON and deleting it (writers), a program's page — its signature and modules,
// "try the program" (a form made from its input fields: outputs, citations and each
// backend call's backend, tokens, latency and cache hit), recent runs, starting a compile
// (writers) — and a compile job's page: its progress and score curve, live over
// server-sent events (GET /v1/programs/{name}/compile/{job}/events). Routes: #/programs,
// #/programs/{name}, #/programs/{name}/compile/{job}. The server checks every call again.

import { api, current, describe } from '../api.js';
import { announce, button, field, fmt, h, s, select, showError, stats, table } from '../dom.js';
import { follow } from '../sse.js';

const ROLES = ['reader', 'writer', 'admin'];

/** What the session may do with programs (the server checks again). */
export const programCan = {
  read() {
    const c = current();
    return !!c && !c.collections;
  },
  write() {
    const c = current();
    return !!c && !c.collections && ROLES.indexOf(c.role) >= 1;
  },
};

const enc = encodeURIComponent;

/** Input field definitions of a program, by name (the first signature that has it). */
export function inputDefs(program) {
  const defs = new Map();
  const walk = (p) => {
    if (!p || typeof p !== 'object') return;
    switch (p.module) {
      case 'predict':
        for (const f of p.signature.inputs) if (!defs.has(f.name)) defs.set(f.name, f);
        break;
      case 'retrieve_then_answer':
        if (!defs.has(p.query_field)) defs.set(p.query_field, { name: p.query_field, type: 'string', desc: `the query for retriever ${p.retriever}` });
        walk({ module: 'predict', ...p.answer });
        break;
      case 'best_of_n':
        walk(p.inner);
        break;
      case 'sequence':
        for (const step of p.steps) walk(step);
        break;
      default:
    }
  };
  walk(program);
  return defs;
}

/** The output fields of a program (its last predictor's). */
export function outputDefs(program) {
  switch (program && program.module) {
    case 'predict':
      return program.signature.outputs;
    case 'retrieve_then_answer':
      return program.answer.signature.outputs;
    case 'best_of_n':
      return outputDefs(program.inner);
    case 'sequence':
      return program.steps.length ? outputDefs(program.steps[program.steps.length - 1]) : [];
    default:
      return [];
  }
}

/** Retriever names of a program's RetrieveThenAnswer modules. */
export function retrieverNames(program) {
  const out = [];
  const walk = (p) => {
    if (!p) return;
    if (p.module === 'retrieve_then_answer' && !out.includes(p.retriever)) out.push(p.retriever);
    if (p.module === 'best_of_n') walk(p.inner);
    if (p.module === 'sequence') p.steps.forEach(walk);
  };
  walk(program);
  return out;
}

function typeText(f) {
  switch (f.type) {
    case 'enum':
      return f.labels && f.labels.length ? `one of ${f.labels.join(', ')}` : `one of the values of ${f.from_input || 'an input'}`;
    case 'list':
      return `list of ${f.items ? typeText(f.items) : 'values'}${f.max_items ? ` (at most ${f.max_items})` : ''}`;
    default:
      return f.type;
  }
}

function fieldList(title, fields) {
  return h('div', null, h('h4', null, title), fields.length === 0 ? h('p', { class: 'muted' }, 'None.') :
    h('ul', null, fields.map((f) => h('li', null, h('code', null, f.name), `: ${typeText(f)}${f.hidden ? ' (hidden from the model)' : ''}${f.desc ? ` — ${f.desc}` : ''}`))));
}

/** A program's modules as nested sections. */
function moduleTree(p, depth = 0) {
  const heading = depth === 0 ? 'h3' : 'h4';
  switch (p.module) {
    case 'predict': {
      const kind = p.reasoning ? 'ChainOfThought' : 'Predict';
      return h('section', { class: 'panel module' },
        h(heading, null, `${kind} `, h('code', null, p.name)),
        h('p', null, h('strong', null, 'Instruction: '), p.signature.instruction),
        h('div', { class: 'cols' }, fieldList('Inputs', p.signature.inputs), fieldList('Outputs', p.signature.outputs)),
        h('p', { class: 'muted' }, `${(p.demos || []).length} demo${(p.demos || []).length === 1 ? '' : 's'}${p.knn ? `, ${p.knn.k} nearest training examples per input` : ''}; max ${p.sampling ? p.sampling.max_tokens : '—'} tokens, temperature ${p.sampling ? p.sampling.temperature : 0}${p.decode && p.decode !== 'generate' ? `; decode ${JSON.stringify(p.decode)}` : ''}.`));
    }
    case 'retrieve_then_answer':
      return h('section', { class: 'panel module' },
        h(heading, null, 'RetrieveThenAnswer'),
        h('p', null, `Retrieves ${p.k} passages (${p.mode || 'vector'}) from retriever `, h('code', null, p.retriever), ' for input ', h('code', null, p.query_field), ', then answers with citations:'),
        moduleTree({ module: 'predict', ...p.answer }, depth + 1));
    case 'best_of_n':
      return h('section', { class: 'panel module' },
        h(heading, null, `BestOfN (n ${p.n}, temperature ${p.temperature})`),
        moduleTree(p.inner, depth + 1));
    case 'sequence':
      return h('section', { class: 'panel module' },
        h(heading, null, `Sequence of ${p.steps.length} steps`),
        p.steps.map((x) => moduleTree(x, depth + 1)));
    default:
      return h('pre', null, JSON.stringify(p, null, 2));
  }
}

// ---------------------------------------------------------------- list

const EXAMPLE = {
  module: 'predict',
  name: 'judge',
  signature: {
    instruction: 'Answer the question with yes or no.',
    inputs: [{ name: 'question', type: 'string' }],
    outputs: [{ name: 'answer', type: 'enum', labels: ['yes', 'no'] }],
  },
  sampling: { max_tokens: 16 },
};

function registerForm() {
  const name = h('input', { name: 'program-name', required: true, maxlength: '64', autocomplete: 'off', spellcheck: 'false' });
  const description = h('input', { name: 'program-description', class: 'wide', maxlength: '1000' });
  const body = h('textarea', { name: 'program-json', class: 'mono tall', required: true, spellcheck: 'false' });
  body.value = JSON.stringify(EXAMPLE, null, 2);
  const form = h('form', { 'aria-labelledby': 'register-title' },
    h('div', { class: 'actions' }, field('Name', name, '1–64 of A–Z a–z 0–9 _ -; an existing name gets a new version'), field('Description', description)),
    field('Program (JSON)', body, 'A module ({"module": "predict" | "retrieve_then_answer" | "best_of_n" | "sequence", …}) or a saved program file'),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Register program')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let program;
    try {
      program = JSON.parse(body.value);
    } catch (e) {
      showError(`The program is not JSON: ${e.message}`);
      body.focus();
      return;
    }
    const req = { name: name.value.trim(), program };
    if (description.value.trim()) req.description = description.value.trim();
    try {
      const p = await api('POST', '/v1/programs', req);
      showError(null);
      announce(`Program ${p.name} version ${p.version} registered.`);
      location.hash = `#/programs/${enc(p.name)}`;
    } catch (e) {
      showError(describe(e));
    }
  });
  return [h('h2', { id: 'register-title' }, 'Register a program'), form];
}

async function list(root) {
  const { programs } = await api('GET', '/v1/programs');
  root.replaceChildren(
    h('h1', null, 'Programs'),
    h('p', { class: 'muted' }, 'LLM programs run on the server\'s local model. ', h('a', { href: '#/chat' }, 'Chat with a kernel'), ' · runs are listed on each program\'s page.'),
    table('Programs by name', [
      { title: 'Name', cell: (p) => h('a', { href: `#/programs/${enc(p.name)}` }, p.name) },
      { title: 'Version', num: true, cell: (p) => String(p.version) },
      { title: 'Versions', num: true, cell: (p) => String(p.versions) },
      { title: 'Updated', cell: (p) => fmt.time(p.updated_at) },
      { title: 'Description', clip: true, cell: (p) => p.description || '' },
    ], programs),
    ...(programCan.write() ? registerForm() : []),
  );
}

// ---------------------------------------------------------------- one program

/** A form control for an input field, and how to read its value. */
function inputControl(def) {
  const name = `input-${def.name}`;
  switch (def.type) {
    case 'number': {
      const el = h('input', { type: 'number', name, step: 'any', required: true });
      return { el, read: () => Number(el.value) };
    }
    case 'bool': {
      const el = h('input', { type: 'checkbox', name });
      return { el, read: () => el.checked };
    }
    case 'enum':
      if (def.labels && def.labels.length) {
        const el = select({ name }, def.labels, def.labels[0]);
        return { el, read: () => el.value };
      }
      break;
    case 'list':
    case 'json': {
      const el = h('textarea', { name, class: 'mono', placeholder: def.type === 'list' ? '["…", "…"]' : '{…}', spellcheck: 'false' });
      return {
        el,
        read: () => {
          try {
            return JSON.parse(el.value);
          } catch (e) {
            throw new Error(`input ${def.name} must be JSON: ${e.message}`);
          }
        },
      };
    }
    default:
  }
  const el = h('textarea', { name, required: true, rows: '2' });
  return { el, read: () => el.value };
}

function valueText(v) {
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

/** A run's answer: outputs, citations, passages, calls. */
export function runResult(r, { citationField = 'citations' } = {}) {
  const cited = Array.isArray(r.outputs[citationField]) ? r.outputs[citationField] : [];
  const parts = [
    h('h3', { id: 'try-result-title', tabindex: '-1' }, 'Outputs'),
    h('dl', { class: 'stats outputs', id: 'try-outputs' }, Object.entries(r.outputs).map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, valueText(v))))),
    h('p', { id: 'try-summary' }, `Run ${r.run_id} of version ${r.version}: ${fmt.ms(r.latency_ms)}, ${fmt.num(r.usage.prompt_tokens)} tokens in, ${fmt.num(r.usage.completion_tokens)} out, ${r.calls.length} call${r.calls.length === 1 ? '' : 's'}.`),
  ];
  if (r.retrieved.length) {
    parts.push(table('Passages retrieved (cited ones marked)', [
      { title: 'Rank', num: true, cell: (x) => String(r.retrieved.indexOf(x) + 1) },
      { title: 'Id', cell: (x) => h('code', null, x.id) },
      { title: 'Cited', cell: (x) => (cited.includes(x.id) ? 'yes' : 'no') },
      { title: 'Score', num: true, cell: (x) => x.score.toFixed(4) },
      { title: 'Text', clip: true, cell: (x) => fmt.clip(x.text, 300) },
    ], r.retrieved, (x) => ({ class: cited.includes(x.id) ? 'match' : null })));
  }
  parts.push(table('Backend calls', [
    { title: 'Module', cell: (c) => c.module || '—' },
    { title: 'Backend', cell: (c) => c.backend },
    { title: 'Model', cell: (c) => c.model },
    { title: 'Tokens in', num: true, cell: (c) => fmt.num(c.prompt_tokens) },
    { title: 'Tokens out', num: true, cell: (c) => fmt.num(c.completion_tokens) },
    { title: 'Latency', num: true, cell: (c) => fmt.ms(c.latency_ms) },
    { title: 'Cache hit', cell: (c) => (c.cache_hit ? 'yes' : 'no') },
    { title: 'Attempts', num: true, cell: (c) => String(c.attempts) },
  ], r.calls));
  return parts;
}

/** `<select>`s of built kernels, one per retriever of the program. */
function retrieverPickers(names, kernels, chosen = null) {
  const built = kernels.filter((k) => k.state === 'succeeded' && !k.orphaned);
  const options = built.map((k) => [k.id, `${k.collection} · ${k.id}`]);
  return names.map((n) => {
    const el = options.length ? select({ name: `retriever-${n}` }, options, chosen || (built.find((k) => k.id === n) ? n : options[0][0])) : h('select', { name: `retriever-${n}`, disabled: true }, h('option', { value: '' }, 'no built kernel'));
    return { name: n, el };
  });
}

function tryForm(info, kernels, runsBox) {
  const defs = inputDefs(info.program);
  const controls = info.inputs.map((n) => ({ def: defs.get(n) || { name: n, type: 'string' }, ...inputControl(defs.get(n) || { name: n, type: 'string' }) }));
  const pickers = retrieverPickers(retrieverNames(info.program), kernels);
  const version = select({ name: 'run-version' }, info.versions.map((v) => [String(v), `version ${v}${v === info.version ? ' (latest)' : ''}`]), String(info.version));
  const out = h('div', { id: 'try-result', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit' }, 'Run');
  const form = h('form', { 'aria-labelledby': 'try-title', id: 'try-form' },
    controls.map((c) => field(c.def.name, c.el, `${typeText(c.def)}${c.def.desc ? ` — ${c.def.desc}` : ''}`)),
    pickers.length ? h('fieldset', null, h('legend', null, 'Retrievers (hosted kernels)'), h('div', { class: 'actions' }, pickers.map((p) => field(`Kernel for ${p.name}`, p.el)))) : null,
    h('div', { class: 'actions' }, field('Version', version), submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const inputs = {};
    try {
      for (const c of controls) inputs[c.def.name] = c.read();
    } catch (e) {
      showError(e.message);
      return;
    }
    const body = { inputs, version: Number(version.value) };
    if (pickers.length) body.retrievers = Object.fromEntries(pickers.map((p) => [p.name, p.el.value]));
    submit.disabled = true;
    showError(null);
    out.replaceChildren(h('p', { class: 'muted' }, 'Running on the local model…'));
    try {
      const r = await api('POST', `/v1/programs/${enc(info.name)}/run`, body);
      out.replaceChildren(...runResult(r));
      announce(`Run finished in ${Math.round(r.latency_ms)} ms.`);
      await runsBox.refresh();
    } catch (e) {
      out.replaceChildren();
      showError(describe(e));
      await runsBox.refresh().catch(() => {});
    } finally {
      submit.disabled = false;
    }
  });
  return [h('h2', { id: 'try-title' }, 'Try the program'), form, out];
}

function recentRuns(name) {
  const box = h('div', { id: 'program-runs' });
  box.refresh = async () => {
    const { runs } = await api('GET', '/v1/programs/runs', undefined, { query: { program: name, limit: 10 } });
    box.replaceChildren(table('Recent runs of this key (an admin sees everyone\'s), newest first', [
      { title: 'Run', cell: (r) => h('code', null, r.id) },
      { title: 'Version', num: true, cell: (r) => String(r.version) },
      { title: 'Started', cell: (r) => fmt.time(r.created_at) },
      { title: 'Latency', num: true, cell: (r) => fmt.ms(r.latency_ms) },
      { title: 'Calls (cached)', num: true, cell: (r) => `${r.calls} (${r.cached_calls})` },
      { title: 'Tokens in', num: true, cell: (r) => fmt.num(r.usage.prompt_tokens) },
      { title: 'Tokens out', num: true, cell: (r) => fmt.num(r.usage.completion_tokens) },
      { title: 'Outcome', cell: (r) => (r.ok ? h('span', { class: 'good' }, 'ok') : h('span', { class: 'bad' }, fmt.clip(r.error || 'failed', 120))) },
    ], runs));
  };
  return box;
}

const OPTIMIZERS = [
  ['bootstrap_few_shot', 'BootstrapFewShot (random search)', { max_bootstrapped: 2, max_labeled: 2, candidates: 2 }],
  ['labeled_few_shot', 'LabeledFewShot', { k: 2 }],
  ['knn_few_shot', 'KnnFewShot', { k: 2 }],
  ['gepa', 'GEPA (reflective instructions)', { minibatch: 2, merge: false, max_candidates: 3 }],
];

/** JSON lines of `{"inputs": {…}, "outputs": {…}}`, each checked. */
function examples(text, what) {
  const out = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let v;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new Error(`${what}, line ${i + 1}: not JSON: ${e.message}`);
    }
    if (!v || typeof v.inputs !== 'object' || typeof v.outputs !== 'object') throw new Error(`${what}, line ${i + 1}: needs "inputs" and "outputs" objects`);
    out.push(v);
  });
  return out;
}

function compileForm(info) {
  const outputs = outputDefs(info.program).map((f) => f.name);
  const optimizer = select({ name: 'optimizer' }, OPTIMIZERS.map(([v, l]) => [v, l]), OPTIMIZERS[0][0]);
  const settings = h('input', { name: 'optimizer-settings', class: 'wide mono', spellcheck: 'false' });
  const metric = select({ name: 'metric' }, [['exact_match', 'exact match'], ['token_f1', 'token F1'], ['citations', 'citations (F1 of cited ids)']], 'exact_match');
  const metricField = select({ name: 'metric-field' }, outputs, outputs[0]);
  const train = h('textarea', { name: 'train', class: 'mono tall', required: true, spellcheck: 'false', placeholder: '{"inputs": {…}, "outputs": {…}} — one example per line' });
  const val = h('textarea', { name: 'val', class: 'mono', spellcheck: 'false', placeholder: 'empty: the training examples' });
  const calls = h('input', { type: 'number', name: 'budget-calls', min: '1', value: '40', class: 'narrow' });
  const seconds = h('input', { type: 'number', name: 'budget-seconds', min: '1', value: '120', class: 'narrow' });
  const seed = h('input', { type: 'number', name: 'seed', min: '0', value: '0', class: 'narrow' });
  const setDefaults = () => {
    settings.value = JSON.stringify(OPTIMIZERS.find(([v]) => v === optimizer.value)[2]);
  };
  optimizer.addEventListener('change', setDefaults);
  setDefaults();
  const form = h('form', { 'aria-labelledby': 'compile-title', id: 'compile-form' },
    h('div', { class: 'actions' }, field('Optimizer', optimizer), field('Optimizer settings (JSON)', settings)),
    h('div', { class: 'actions' }, field('Metric', metric), field('Metric field', metricField)),
    field('Training examples (JSON lines)', train),
    field('Validation examples (JSON lines)', val, 'Scores each candidate; empty uses the training examples'),
    h('div', { class: 'actions' }, field('Budget: calls', calls), field('Budget: seconds', seconds), field('Seed', seed), h('button', { type: 'submit' }, 'Start compile')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let body;
    try {
      const opt = { optimizer: optimizer.value, ...JSON.parse(settings.value || '{}') };
      const t = examples(train.value, 'training examples');
      const v = val.value.trim() ? examples(val.value, 'validation examples') : t;
      body = {
        optimizer: opt,
        metric: { metric: metric.value, field: metricField.value },
        train: t,
        val: v,
        budget: { calls: Number(calls.value), seconds: Number(seconds.value) },
        seed: Number(seed.value),
        version: info.version,
      };
    } catch (e) {
      showError(e.message);
      return;
    }
    try {
      const job = await api('POST', `/v1/programs/${enc(info.name)}/compile`, body);
      showError(null);
      announce(`Compile job ${job.id} started.`);
      location.hash = `#/programs/${enc(info.name)}/compile/${enc(job.id)}`;
    } catch (e) {
      showError(describe(e));
    }
  });
  return [
    h('h2', { id: 'compile-title' }, 'Compile'),
    h('p', { class: 'muted' }, `Optimizes version ${info.version} against labelled examples; the result becomes a new version. Budgets stop it early with the best program so far.`),
    form,
  ];
}

async function detail(root, name) {
  const [info, kernels] = await Promise.all([
    api('GET', `/v1/programs/${enc(name)}`),
    api('GET', '/v1/kernels').then((r) => r.kernels).catch(() => []),
  ]);
  const origin = info.origin.startsWith('compiled:')
    ? h('a', { href: `#/programs/${enc(name)}/compile/${enc(info.origin.slice(9))}` }, info.origin)
    : info.origin;
  const runsBox = recentRuns(name);
  const parts = [
    h('h1', null, `Program ${info.name}`),
    h('p', { class: 'actions' }, h('a', { href: '#/programs' }, 'All programs'), retrieverNames(info.program).length ? h('a', { href: `#/chat?program=${enc(name)}` }, 'Chat with it') : null),
    info.description ? h('p', null, info.description) : null,
    stats([
      ['Version', `${info.version} of ${info.versions.length}`],
      ['Origin', origin],
      ['Made by', info.created_by],
      ['Made at', fmt.time(info.created_at)],
      ['Inputs', info.inputs.join(', ') || '—'],
      ['Predictors', info.predictors.join(', ') || '—'],
    ], 'Program'),
    h('h2', null, 'Signature and modules'),
    moduleTree(info.program),
    h('details', null, h('summary', null, 'Program JSON'), h('pre', null, JSON.stringify(info.program, null, 2))),
    ...tryForm(info, kernels, runsBox),
    h('h2', null, 'Recent runs'),
    runsBox,
  ];
  if (programCan.write()) {
    parts.push(...compileForm(info));
    parts.push(h('h2', null, 'Delete'), button(`Delete program ${name}`, async () => {
      if (!window.confirm(`Delete program ${name} with all ${info.versions.length} versions?`)) return;
      try {
        await api('DELETE', `/v1/programs/${enc(name)}`);
        announce(`Program ${name} deleted.`);
        location.hash = '#/programs';
      } catch (e) {
        showError(describe(e));
      }
    }, { class: 'danger' }));
  }
  root.replaceChildren(...parts);
  await runsBox.refresh();
}

// ---------------------------------------------------------------- compile jobs

/**
 * The score curve of a compile: each scored candidate (trial) as a point, the best score so
 * far as a line; an SVG drawn with attributes and the stylesheet only.
 */
export function scoreChart(points) {
  const width = 720;
  const height = 260;
  const left = 52;
  const right = 16;
  const top = 14;
  const bottom = 40;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const max = Math.max(1, ...points.map((p) => p.score));
  const n = Math.max(points.length, 2);
  const x = (i) => left + (points.length <= 1 ? plotW / 2 : (i / (n - 1)) * plotW);
  const y = (v) => top + plotH - (v / max) * plotH;
  const id = `chart-${Math.random().toString(36).slice(2, 8)}`;
  const summary = points.length
    ? points.map((p, i) => `trial ${i + 1} (${p.stage}) ${p.score.toFixed(3)}`).join('; ')
    : 'no candidate scored yet';
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((t) => t * max);
  return s('svg', { class: 'chart score-chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': id, width, height },
    s('title', { id }, `Validation score per trial: ${summary}`),
    ticks.map((t) => s('g', null,
      s('line', { class: 'grid', x1: left, x2: width - right, y1: y(t).toFixed(1), y2: y(t).toFixed(1) }),
      s('text', { class: 'label', x: left - 6, y: (y(t) + 4).toFixed(1), 'text-anchor': 'end' }, t.toFixed(2)))),
    s('line', { class: 'axis', x1: left, x2: left, y1: top, y2: top + plotH }),
    s('line', { class: 'axis', x1: left, x2: width - right, y1: top + plotH, y2: top + plotH }),
    s('text', { class: 'label', x: left + plotW / 2, y: height - 6, 'text-anchor': 'middle' }, 'trial (candidate scored, in order)'),
    points.length > 1 ? s('polyline', { class: 'best-line', points: points.map((p, i) => `${x(i).toFixed(1)},${y(p.best_score).toFixed(1)}`).join(' ') }) : null,
    points.map((p, i) => s('g', null,
      s('circle', { class: 'point', cx: x(i).toFixed(1), cy: y(p.score).toFixed(1), r: 5, 'data-trial': i + 1 },
        s('title', null, `Trial ${i + 1} (${p.stage}, step ${p.step}): score ${p.score.toFixed(3)}, best so far ${p.best_score.toFixed(3)}, ${p.calls} calls`)),
      s('text', { class: 'value', x: x(i).toFixed(1), y: (top + plotH + 16).toFixed(1), 'text-anchor': 'middle' }, String(i + 1)))));
}

function jobState(job) {
  const pr = job.progress;
  const steps = pr.total ? `${pr.done} of ${pr.total} steps` : `${pr.done} steps`;
  if (job.state !== 'running') {
    const cls = job.state === 'succeeded' ? 'good' : 'bad';
    return ['State: ', h('span', { class: cls }, job.state), ` — ${steps}${job.error ? `: ${job.error}` : ''}`];
  }
  const frac = pr.total ? Math.min(1, pr.done / pr.total) : 0;
  return ['State: running ', h('progress', { max: '1', value: String(frac), 'aria-label': `Compile job ${job.id}` }), ` ${pr.stage || 'starting'}, ${steps}`];
}

function jobBody(name, job) {
  const pr = job.progress;
  const history = pr.history || [];
  const rep = job.report || {};
  const parts = [
    stats([
      ['Base version', String(job.base_version)],
      ['Best score', pr.best_score === undefined || pr.best_score === null ? '—' : pr.best_score.toFixed(3)],
      ['Trials scored', String(history.length)],
      ['Calls', fmt.num(pr.calls)],
      ['Tokens', fmt.num(pr.tokens)],
      ['Started', fmt.time(job.created_at)],
      ['Finished', job.finished_at ? fmt.time(job.finished_at) : '—'],
      ['Result', job.result_version ? h('a', { href: `#/programs/${enc(name)}` }, `version ${job.result_version}`) : '—'],
    ], 'Compile job'),
    h('h2', null, 'Score curve'),
    h('figure', { id: 'score-chart' },
      scoreChart(history),
      h('figcaption', null, 'Validation score of each candidate the optimizer scored (points) and the best so far (line).')),
    h('details', { class: 'score-table' }, h('summary', null, 'The score curve as a table'),
      table('Scored candidates', [
        { title: 'Trial', num: true, cell: (p) => String(history.indexOf(p) + 1) },
        { title: 'Stage', cell: (p) => p.stage },
        { title: 'Step', num: true, cell: (p) => String(p.step) },
        { title: 'Score', num: true, cell: (p) => p.score.toFixed(3) },
        { title: 'Best so far', num: true, cell: (p) => p.best_score.toFixed(3) },
        { title: 'Calls', num: true, cell: (p) => fmt.num(p.calls) },
      ], history)),
  ];
  if (job.report) {
    parts.push(h('h2', null, 'Report'), stats([
      ['Score', rep.score === undefined || rep.score === null ? '—' : rep.score.toFixed(3)],
      ['Calls', fmt.num(rep.calls)],
      ['Tokens', fmt.num(rep.tokens)],
      ['Seconds', rep.seconds === undefined ? '—' : rep.seconds.toFixed(1)],
      ['Stopped by', rep.stopped_by || 'nothing (finished)'],
    ], 'Report'));
  }
  return parts;
}

async function compileJob(root, name, id) {
  const path = `/v1/programs/${enc(name)}/compile/${enc(id)}`;
  const job = await api('GET', path);
  const state = h('p', { id: 'job-state', 'aria-live': 'polite' }, jobState(job));
  const body = h('div', { id: 'job-body' }, jobBody(name, job));
  const cancel = programCan.write() && job.state === 'running'
    ? button('Cancel compile', async () => {
      try {
        await api('POST', `${path}/cancel`);
        announce('Cancelling at the optimizer\'s next step.');
      } catch (e) {
        showError(describe(e));
      }
    }, { class: 'danger', id: 'job-cancel' })
    : null;
  root.replaceChildren(
    h('h1', null, `Compile job ${job.id}`),
    h('p', { class: 'actions' }, h('a', { href: `#/programs/${enc(name)}` }, `Program ${name}`), h('a', { href: '#/programs' }, 'All programs')),
    state,
    cancel ? h('div', { class: 'actions' }, cancel) : null,
    body,
  );
  if (job.state !== 'running') return;
  // Every event is the whole job: the state line, figures and chart are drawn again.
  follow(`${path}/events`, {
    view: root,
    until: (e) => e.data && e.data.state !== 'running',
    onEvent: (e) => {
      const now = e.data;
      if (!now || typeof now !== 'object' || now.id !== id || !root.isConnected) return;
      state.replaceChildren(...jobState(now));
      const open = body.querySelector('details.score-table')?.open;
      body.replaceChildren(...jobBody(name, now));
      if (open) body.querySelector('details.score-table').open = true;
      if (now.state !== 'running') {
        if (cancel) cancel.remove();
        announce(`Compile job ${id} ${now.state}.`);
      }
    },
  });
}

export async function render(root, { args }) {
  if (!programCan.read()) {
    root.replaceChildren(h('h1', null, 'Programs'), h('p', null, 'Programs are server-wide: they need a key scoped to all collections.'));
    return;
  }
  const [name, sub, job] = args;
  if (name && sub === 'compile' && job) await compileJob(root, name, job);
  else if (name) await detail(root, name);
  else await list(root);
}
