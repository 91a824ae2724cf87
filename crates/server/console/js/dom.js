// DOM helpers: elements built with properties and text nodes only (never parsed HTML),
// live regions for status and errors, forms with labels, tables, number formats.

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.setAttribute('class', v);
    } else if (k === 'for') {
      el.htmlFor = v;
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (['value', 'checked', 'disabled', 'selected', 'hidden', 'required', 'readOnly', 'multiple'].includes(k)) {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  return el;
}

/** An HTML element: `h('button', {class: 'x', onclick: f}, 'Text')`. */
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

let uid = 0;
/** A fresh element id. */
export function newId(prefix = 'f') {
  uid += 1;
  return `${prefix}-${uid}`;
}

/**
 * A labelled form control: the label names it (and only the label: a hint describes it
 * through `aria-describedby`, so it is not part of the name).
 */
export function field(label, control, hint) {
  if (!control.id) control.id = newId();
  const name = h('label', { for: control.id }, label);
  if (control.type === 'checkbox' || control.type === 'radio') return h('div', { class: 'field check' }, control, name);
  const parts = [name, control];
  if (hint) {
    const hid = newId('hint');
    control.setAttribute('aria-describedby', hid);
    parts.push(h('small', { id: hid }, hint));
  }
  return h('div', { class: 'field' }, parts);
}

/** A `<select>` of `options` (strings or `[value, label]`). */
export function select(attrs, options, selected) {
  return h(
    'select',
    attrs,
    options.map((o) => {
      const [value, label] = Array.isArray(o) ? o : [o, o];
      return h('option', { value, selected: value === selected }, label);
    }),
  );
}

/** A table. `columns`: `{title, cell(row) -> node|string, num?}`. */
export function table(caption, columns, rows, rowAttrs) {
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      null,
      h('caption', null, caption),
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.title)))),
      h(
        'tbody',
        null,
        rows.length === 0
          ? h('tr', null, h('td', { colspan: columns.length }, 'None.'))
          : rows.map((r) =>
              h('tr', rowAttrs ? rowAttrs(r) : null, columns.map((c) => h('td', { class: c.num ? 'num' : c.clip ? 'clip' : null }, c.cell(r)))),
            ),
      ),
    ),
  );
}

/** Statistics as a definition list: `[[label, value], …]`. */
export function stats(pairs, label) {
  return h('dl', { class: 'stats', 'aria-label': label }, pairs.map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, v))));
}

/** Empties an element. */
export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Says something politely to screen readers (and leaves it in the status region). */
export function announce(message) {
  const el = document.getElementById('status');
  el.textContent = '';
  // A fresh text node so repeated messages are announced again.
  setTimeout(() => {
    el.textContent = message;
  }, 30);
}

/** Shows an error in the assertive alert region; `null` clears it. */
export function showError(message) {
  document.getElementById('alert').textContent = message || '';
}

export const fmt = {
  num(n) {
    return n === null || n === undefined ? '—' : Number(n).toLocaleString('en');
  },
  bytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = Number(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
  },
  ms(n) {
    return n === null || n === undefined || Number.isNaN(n) ? '—' : `${Number(n).toFixed(n < 10 ? 2 : 1)} ms`;
  },
  time(t) {
    if (t === null || t === undefined) return '—';
    const d = typeof t === 'number' ? new Date(t) : new Date(t);
    return Number.isNaN(d.getTime()) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  },
  json(v) {
    return v === null || v === undefined ? '' : JSON.stringify(v);
  },
  clip(s, n = 160) {
    if (!s) return '';
    return s.length > n ? `${s.slice(0, n)}…` : s;
  },
};

/**
 * A button that runs `action`; clicks while it runs are ignored (the button is marked
 * busy, not disabled, so the action may set `disabled` for what comes after).
 */
export function button(label, action, attrs = {}) {
  const b = h('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', async () => {
    if (b.getAttribute('aria-busy') === 'true') return;
    b.setAttribute('aria-busy', 'true');
    try {
      await action();
    } finally {
      b.removeAttribute('aria-busy');
    }
  });
  return b;
}
