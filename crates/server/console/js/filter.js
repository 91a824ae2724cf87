// The filter builder: conditions joined by and/or, written out in the filter language's
// text syntax (crates/index/src/filter.rs): `field op value`, `field in [v, …]`, `not`,
// values as JSON strings, numbers, true, false or null. The expression stays editable.

import { h, field, select, button } from './dom.js';

const OPS = [
  ['=', '= (equals)'],
  ['!=', '≠ (differs)'],
  ['<', '< (number)'],
  ['<=', '≤ (number)'],
  ['>', '> (number)'],
  ['>=', '≥ (number)'],
  ['in', 'in (one of, comma-separated)'],
];
const TYPES = [
  ['string', 'text'],
  ['number', 'number'],
  ['bool', 'true/false'],
  ['null', 'null'],
];
const FIELD = /^[A-Za-z_][A-Za-z0-9_.-]*$/;
const KEYWORDS = new Set(['and', 'or', 'not', 'in']);

/** One value in the syntax, or throws with a message for people. */
export function literal(raw, type) {
  const v = raw.trim();
  switch (type) {
    case 'number': {
      if (v === '' || !Number.isFinite(Number(v))) throw new Error(`"${raw}" is not a number`);
      return String(Number(v));
    }
    case 'bool': {
      const b = v.toLowerCase();
      if (b !== 'true' && b !== 'false') throw new Error(`"${raw}" is not true or false`);
      return b;
    }
    case 'null':
      return 'null';
    default:
      return JSON.stringify(raw);
  }
}

/** One condition in the syntax. */
export function condition({ path, op, value, type, negate }) {
  const p = path.trim();
  if (!FIELD.test(p) || KEYWORDS.has(p.toLowerCase())) {
    throw new Error(`"${path}" is not a field name (letters, digits, _ . -; dotted paths reach nested fields)`);
  }
  const numeric = ['<', '<=', '>', '>='].includes(op);
  let text;
  if (op === 'in') {
    const items = value.split(',').map((x) => x.trim()).filter((x) => x !== '');
    text = `${p} in [${items.map((x) => literal(x, type)).join(', ')}]`;
  } else {
    text = `${p} ${op} ${literal(value, numeric ? 'number' : type)}`;
  }
  return negate ? `not ${text}` : text;
}

/** The whole expression: conditions joined by `and` or `or`; '' when there are none. */
export function expression(conditions, join) {
  const parts = conditions.map(condition);
  if (parts.length <= 1) return parts.join('');
  return parts.map((p) => (join === 'or' ? p : `(${p})`)).join(` ${join} `);
}

/**
 * The builder. `onApply(expression)` runs when the user applies the filter. The
 * generated expression lands in an editable text field, which is what gets applied.
 */
export function filterBuilder({ onApply, legend = 'Filter' }) {
  const rows = h('div');
  const join = select({}, [['and', 'all conditions (and)'], ['or', 'any condition (or)']], 'and');
  const expr = h('input', { type: 'text', class: 'wide mono', name: 'filter', placeholder: 'e.g. pos = "n" and year >= 1990', autocomplete: 'off', spellcheck: 'false' });
  const problem = h('p', { class: 'bad', role: 'alert' });
  const conditions = [];

  function rebuild() {
    problem.textContent = '';
    try {
      expr.value = expression(conditions.filter((c) => c.path.value.trim() !== '').map(read), join.value);
      return true;
    } catch (e) {
      problem.textContent = e.message;
      return false;
    }
  }

  function read(c) {
    return { path: c.path.value, op: c.op.value, value: c.value.value, type: c.type.value, negate: c.negate.checked };
  }

  function addRow() {
    const n = conditions.length + 1;
    const c = {
      path: h('input', { type: 'text', class: 'narrow', name: `field-${n}`, autocomplete: 'off', spellcheck: 'false' }),
      op: select({ name: `op-${n}` }, OPS, '='),
      value: h('input', { type: 'text', name: `value-${n}`, autocomplete: 'off' }),
      type: select({ name: `type-${n}` }, TYPES, 'string'),
      negate: h('input', { type: 'checkbox', name: `not-${n}` }),
    };
    const row = h(
      'fieldset',
      { class: 'filter-row' },
      h('legend', null, `Condition ${n}`),
      field('Field', c.path),
      field('Operator', c.op),
      field('Value', c.value),
      field('Value type', c.type),
      field('not', c.negate),
      button('Remove', () => {
        conditions.splice(conditions.indexOf(c), 1);
        row.remove();
        rebuild();
      }, { class: 'secondary', 'aria-label': `Remove condition ${n}` }),
    );
    for (const el of [c.path, c.op, c.value, c.type, c.negate]) {
      el.addEventListener('input', rebuild);
      el.addEventListener('change', rebuild);
    }
    conditions.push(c);
    rows.append(row);
    return c;
  }

  join.addEventListener('change', rebuild);
  const form = h(
    'form',
    { class: 'filter', 'aria-label': legend },
    h('fieldset', null, h('legend', null, legend), field('Match', join), rows, h('div', { class: 'actions' }, button('Add condition', () => addRow().path.focus(), { class: 'secondary' }))),
    field('Filter expression', expr, 'Built from the conditions above; you can also type it (the filter language: = != < <= > >= in, and, or, not, parentheses).'),
    problem,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Apply filter'), button('Clear', () => {
      conditions.splice(0);
      rows.replaceChildren();
      expr.value = '';
      problem.textContent = '';
      onApply('');
    }, { class: 'secondary' })),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    onApply(expr.value.trim());
  });
  return {
    element: form,
    value: () => expr.value.trim(),
    set(text) {
      expr.value = text || '';
    },
  };
}
