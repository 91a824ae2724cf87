// The audit log (admin): the chain's verification (GET /v1/audit/verify), entries
// filtered by actor and action, paged by sequence number; the latest page first.

import { api, describe } from '../api.js';
import { button, field, fmt, h, select, showError, stats, table } from '../dom.js';

const LIMITS = ['25', '50', '100', '500'];

async function verdict(slot) {
  slot.replaceChildren(h('p', { class: 'muted' }, 'Verifying the chain…'));
  try {
    const v = await api('GET', '/v1/audit/verify');
    slot.replaceChildren(
      h('p', { id: 'chain-status', class: v.problem ? 'bad' : 'good' },
        v.problem ? `Chain BROKEN after ${fmt.num(v.entries)} good entries: ${v.problem}` : `Chain verified: ${fmt.num(v.entries)} entries intact.`),
      stats([
        ['Head hash', h('code', null, `${v.head_hash.slice(0, 16)}…`)],
        ['Keyed (HMAC) from entry', v.keyed_from === null || v.keyed_from === undefined ? 'unkeyed' : fmt.num(v.keyed_from)],
        ['Signed checkpoints', `${fmt.num(v.checkpoints)}${v.checkpoint_seq ? ` (up to entry ${fmt.num(v.checkpoint_seq)})` : ''}`],
        ['Keys matching the log', fmt.num(v.keys_checked)],
      ], 'Audit chain'),
    );
  } catch (e) {
    slot.replaceChildren(h('p', { class: 'bad' }, `The chain could not be verified: ${describe(e)}`));
  }
}

export async function render(root) {
  const chain = h('section', { class: 'panel', 'aria-labelledby': 'chain-title' });
  const actor = h('input', { type: 'text', name: 'actor', placeholder: 'key:abc123def456', autocomplete: 'off' });
  const action = h('input', { type: 'text', name: 'action', placeholder: 'keys.create', autocomplete: 'off' });
  const limit = select({ name: 'limit' }, LIMITS, '50');
  const results = h('div', { 'aria-live': 'polite' });
  let after = null; // the after_seq of the page shown
  let lastSeq = 0;
  const older = button('Older', () => load(Math.max(0, after - Number(limit.value))), { class: 'secondary' });
  const newer = button('Newer', () => load(lastSeq), { class: 'secondary' });
  const latest = button('Latest', () => load(null), { class: 'secondary' });

  async function load(afterSeq) {
    const filtered = actor.value.trim() !== '' || action.value.trim() !== '';
    const q = { limit: limit.value, actor: actor.value.trim(), action: action.value.trim() };
    let page;
    try {
      if (afterSeq === null && !filtered) {
        // The latest page: find the head, then read the last `limit` entries.
        const head = await api('GET', '/v1/audit', undefined, { query: { limit: 1, after_seq: 1e15 } });
        afterSeq = Math.max(0, head.head_seq - Number(limit.value));
      }
      page = await api('GET', '/v1/audit', undefined, { query: { ...q, after_seq: afterSeq || 0 } });
    } catch (e) {
      showError(describe(e));
      return;
    }
    showError(null);
    after = afterSeq || 0;
    const entries = page.entries;
    lastSeq = entries.length ? entries[entries.length - 1].seq : after;
    results.replaceChildren(
      h('p', { id: 'audit-info' }, `Entries ${entries.length ? `${entries[0].seq}–${lastSeq}` : 'none'} of ${fmt.num(page.head_seq)}${filtered ? ' (filtered)' : ''}.`),
      table('Audit entries, oldest first', [
        { title: 'Seq', num: true, cell: (e) => String(e.seq) },
        { title: 'Time', cell: (e) => fmt.time(e.ts_ms) },
        { title: 'Actor', cell: (e) => h('code', null, e.actor) },
        { title: 'Action', cell: (e) => e.action },
        { title: 'Target', clip: true, cell: (e) => e.target },
        { title: 'Outcome', cell: (e) => h('span', { class: e.outcome === 'ok' ? 'good' : 'bad' }, e.outcome) },
        { title: 'Detail', clip: true, cell: (e) => fmt.clip(e.detail, 200) },
      ], entries),
    );
    older.disabled = after === 0 || filtered;
    newer.disabled = lastSeq >= page.head_seq || entries.length < Number(limit.value);
  }

  const form = h('form', { class: 'inline', 'aria-labelledby': 'entries-title' },
    field('Actor', actor, 'exact, e.g. key:… or token:…'),
    field('Action', action, 'exact, e.g. keys.revoke'),
    field('Entries per page', limit),
    h('button', { type: 'submit' }, 'Show entries'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    load(actor.value.trim() || action.value.trim() ? 0 : null);
  });
  chain.append(h('h2', { id: 'chain-title' }, 'Chain verification'), h('div', { id: 'chain' }));
  root.replaceChildren(
    h('h1', null, 'Audit log'),
    chain,
    h('h2', { id: 'entries-title' }, 'Entries'),
    form,
    h('div', { class: 'actions' }, latest, older, newer),
    results,
  );
  await Promise.all([verdict(chain.querySelector('#chain')), load(null)]);
}
