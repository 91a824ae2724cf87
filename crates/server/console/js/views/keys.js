// API keys (admin): list, create, rotate, revoke; and minting a token from a key. A new
// secret is shown once, in this page only, and is gone when the view is left.

import { api, describe, withCredential } from '../api.js';
import { announce, button, field, fmt, h, select, showError, table } from '../dom.js';

function collectionsOf(text) {
  const list = text.split(',').map((x) => x.trim()).filter((x) => x !== '');
  return list.length ? list : undefined;
}

/** The once-only display of a secret, focused so it is read out. */
function secretPanel(slot, title, secret, note) {
  const out = h('input', { type: 'text', readOnly: true, value: secret, class: 'wide mono', name: 'secret', spellcheck: 'false' });
  const panel = h(
    'section',
    { class: 'notice secret', 'aria-labelledby': 'secret-title' },
    h('h2', { id: 'secret-title', tabindex: '-1' }, title),
    h('p', null, note),
    field('Secret (shown only now)', out),
    h('div', { class: 'actions' },
      button('Copy', async () => {
        try {
          await navigator.clipboard.writeText(secret);
          announce('Copied.');
        } catch {
          out.select();
          announce('Select and copy the secret by hand.');
        }
      }, { class: 'secondary' }),
      button('Done, hide it', () => slot.replaceChildren(), { class: 'secondary' })),
  );
  slot.replaceChildren(panel);
  panel.querySelector('h2').focus();
}

export async function render(root) {
  const { keys } = await api('GET', '/v1/keys');
  const secretSlot = h('div', { id: 'secret-slot' });

  async function rotate(k) {
    if (!window.confirm(`Rotate key ${k.name} (${k.id})? The old secret keeps working for the server's grace period.`)) return;
    try {
      const r = await api('POST', `/v1/keys/${encodeURIComponent(k.id)}/rotate`, {});
      await refresh();
      secretPanel(secretSlot, `New secret for ${r.info.name}`, r.key, `Key ${r.info.id} replaces ${k.id}. Store it now: it cannot be shown again.`);
    } catch (e) {
      showError(describe(e));
    }
  }

  async function revoke(k) {
    if (!window.confirm(`Revoke key ${k.name} (${k.id}) and every token it minted?`)) return;
    try {
      await api('DELETE', `/v1/keys/${encodeURIComponent(k.id)}`);
      announce(`Key ${k.id} revoked.`);
      await refresh();
    } catch (e) {
      showError(describe(e));
    }
  }

  const list = h('div');
  function draw(rows) {
    list.replaceChildren(
      table('API keys (secrets are never listed)', [
        { title: 'Id', cell: (k) => h('code', null, k.id) },
        { title: 'Name', cell: (k) => k.name },
        { title: 'Role', cell: (k) => k.role },
        { title: 'Collections', cell: (k) => (k.collections ? k.collections.join(', ') : 'all') },
        { title: 'Created', cell: (k) => fmt.time(k.created_at) },
        { title: 'Expires', cell: (k) => (k.expires_at ? fmt.time(k.expires_at) : 'never') },
        { title: 'State', cell: (k) => (k.active ? h('span', { class: 'good' }, 'active') : h('span', { class: 'bad' }, k.revoked_at ? 'revoked' : 'expired')) },
        { title: 'Actions', cell: (k) => (k.active ? h('div', { class: 'actions' },
          button('Rotate', () => rotate(k), { class: 'secondary', 'aria-label': `Rotate key ${k.name} ${k.id}` }),
          button('Revoke', () => revoke(k), { class: 'danger', 'aria-label': `Revoke key ${k.name} ${k.id}` })) : (k.rotated_to ? `replaced by ${k.rotated_to}` : '')) },
      ], rows),
    );
  }
  async function refresh() {
    const r = await api('GET', '/v1/keys');
    draw(r.keys);
  }
  draw(keys);

  const name = h('input', { type: 'text', name: 'key-name', required: true, maxlength: '128', autocomplete: 'off' });
  const role = select({ name: 'role' }, ['reader', 'writer', 'admin'], 'reader');
  const cols = h('input', { type: 'text', name: 'collections', autocomplete: 'off', placeholder: 'all' });
  const expires = h('input', { type: 'number', name: 'expires-in', min: '1', class: 'narrow', placeholder: 'never' });
  const create = h('form', { class: 'inline', 'aria-labelledby': 'create-key-title' },
    field('Name', name),
    field('Role', role),
    field('Collections', cols, 'comma-separated; empty for all'),
    field('Expires in (seconds)', expires),
    h('button', { type: 'submit' }, 'Create key'));
  create.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { name: name.value, role: role.value, collections: collectionsOf(cols.value) };
    if (expires.value) body.expires_in_secs = Number(expires.value);
    try {
      const r = await api('POST', '/v1/keys', body);
      create.reset();
      await refresh();
      secretPanel(secretSlot, `Key ${r.info.name} created`, r.key, `Key ${r.info.id}, role ${r.info.role}. Store the secret now: only its keyed hash is kept, it cannot be shown again.`);
    } catch (e) {
      showError(describe(e));
    }
  });

  const mintKey = h('input', { type: 'password', name: 'mint-key', required: true, autocomplete: 'off', class: 'wide', spellcheck: 'false' });
  const mintRole = select({ name: 'mint-role' }, [['', "the key's"], 'reader', 'writer', 'admin'], '');
  const mintCols = h('input', { type: 'text', name: 'mint-collections', autocomplete: 'off', placeholder: "the key's" });
  const ttl = h('input', { type: 'number', name: 'ttl', min: '1', value: '900', class: 'narrow' });
  const mint = h('form', { 'aria-labelledby': 'mint-title' },
    field('API key to mint from', mintKey, 'Tokens are minted by keys, not by tokens: paste the key; it is used for this one request and not kept.'),
    h('div', { class: 'actions' }, field('Role (at most the key’s)', mintRole), field('Collections (within the key’s)', mintCols), field('Lifetime (seconds)', ttl)),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Mint token')));
  mint.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { ttl_secs: Number(ttl.value) };
    if (mintRole.value) body.role = mintRole.value;
    const c = collectionsOf(mintCols.value);
    if (c) body.collections = c;
    const credential = mintKey.value;
    mintKey.value = '';
    try {
      const t = await withCredential(credential, 'POST', '/v1/tokens', body);
      mint.reset();
      secretPanel(secretSlot, 'Token minted', t.token, `Role ${t.role}, ${t.collections ? t.collections.join(', ') : 'all collections'}, expires ${fmt.time(t.expires_at)}.`);
    } catch (e) {
      showError(describe(e));
    }
  });

  root.replaceChildren(
    h('h1', null, 'API keys'),
    secretSlot,
    list,
    h('h2', { id: 'create-key-title' }, 'Create a key'),
    create,
    h('h2', { id: 'mint-title' }, 'Mint a token'),
    mint,
  );
}
