// Fleet devices and groups: the device list with live online/offline state, accept /
// reject / revoke (admins), one device's labels, inventory and log, and the groups
// (static, or dynamic with a filter). See fleet.js for the routes and live updates.

import { api, describe } from '../api.js';
import { announce, button, field, fmt, h, select, showError, stats, table } from '../dom.js';
import { coalesce, fleetCan, live, subnav, when } from './fleet.js';

const STATUSES = [['', 'any'], 'pending', 'accepted', 'rejected', 'revoked', 'decommissioned'];

function onlineCell(d) {
  if (d.status !== 'accepted') return h('span', { class: 'muted' }, '—');
  return d.online
    ? h('span', { class: 'good', 'data-online': 'true' }, '● online')
    : h('span', { class: 'bad', 'data-online': 'false' }, '○ offline');
}

function labelsText(labels) {
  const e = Object.entries(labels || {});
  return e.length ? e.map(([k, v]) => `${k}=${v}`).join(', ') : '—';
}

function kernelsText(inv) {
  const e = Object.entries((inv && inv.kernels) || {});
  return e.length ? e.map(([ch, k]) => `${ch} v${k.version}`).join(', ') : 'none';
}

/** Accept / reject / revoke, as the device's status allows (admins). */
function decisions(d, after) {
  if (!fleetCan.admin()) return [];
  const act = (verb, label, cls) =>
    button(label, async () => {
      if (verb !== 'accept' && !window.confirm(`${label} device ${d.identity} (${d.id})?`)) return;
      try {
        await api('POST', `/v1/fleet/devices/${encodeURIComponent(d.id)}/${verb}`);
        announce(`Device ${d.identity} ${{ accept: 'accepted', reject: 'rejected', revoke: 'revoked' }[verb]}.`);
        await after();
      } catch (e) {
        showError(describe(e));
      }
    }, { class: cls, 'aria-label': `${label} device ${d.identity}` });
  switch (d.status) {
    case 'pending':
      return [act('accept', 'Accept', null), act('reject', 'Reject', 'danger')];
    case 'rejected':
      return [act('accept', 'Accept', 'secondary')];
    case 'accepted':
      return [act('revoke', 'Revoke', 'danger')];
    default:
      return [];
  }
}

/** The device list: `?status=…&filter=…&group=…` in the route's query. */
export async function list(root, { query }) {
  const status = select({ name: 'device-status' }, STATUSES, query.get('status') || '');
  const filter = h('input', { type: 'text', name: 'device-filter', class: 'wide', autocomplete: 'off', value: query.get('filter') || '', placeholder: 'labels.region = "eu" and online = true' });
  const group = query.get('group') || '';
  const info = h('p', { id: 'device-info', class: 'muted' });
  const slot = h('div', { id: 'device-list' });
  let rows = [];

  function draw() {
    slot.replaceChildren(
      table('Devices', [
        { title: 'Device', cell: (d) => h('a', { href: `#/fleet/devices/${encodeURIComponent(d.id)}` }, d.identity) },
        { title: 'Id', cell: (d) => h('code', null, d.id) },
        { title: 'Status', cell: (d) => d.status },
        { title: 'Online', cell: onlineCell },
        { title: 'Labels', cell: (d) => labelsText(d.labels) },
        { title: 'Group', cell: (d) => d.group || '—' },
        { title: 'Kernels', cell: (d) => kernelsText(d.inventory) },
        { title: 'Agent', cell: (d) => (d.inventory && d.inventory.agent_version) || '—' },
        { title: 'Last seen', cell: (d) => when(d.last_seen_ms) },
        ...(fleetCan.admin() ? [{ title: 'Actions', cell: (d) => h('div', { class: 'actions' }, decisions(d, load)) }] : []),
      ], rows, (d) => ({ 'data-device': d.id, 'data-status': d.status })),
    );
    const online = rows.filter((d) => d.status === 'accepted' && d.online).length;
    const accepted = rows.filter((d) => d.status === 'accepted').length;
    const pending = rows.filter((d) => d.status === 'pending').length;
    info.textContent = `${rows.length} devices${group ? ` in group ${group}` : ''}: ${online} of ${accepted} accepted online, ${pending} pending.`;
  }

  async function load() {
    const q = new URLSearchParams();
    if (status.value) q.set('status', status.value);
    if (filter.value.trim()) q.set('filter', filter.value.trim());
    else if (group) q.set('group', group);
    q.set('limit', '1000');
    try {
      rows = (await api('GET', `/v1/fleet/devices?${q}`)).devices;
      draw();
    } catch (e) {
      showError(describe(e));
    }
  }

  const form = h('form', { class: 'inline', 'aria-labelledby': 'device-filter-title' },
    field('Status', status),
    field('Filter expression', filter, 'the filter language over id, identity, status, online, group, labels.*, inventory.*'),
    h('button', { type: 'submit' }, 'Show devices'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    load();
  });

  const reload = coalesce(load);
  const badge = live(root, (kind, e) => {
    if (!e.device) return;
    const d = rows.find((r) => r.id === e.device);
    if (d && (kind === 'device_online' || kind === 'device_offline')) {
      // The event says it all: redraw this row now, without a round trip.
      d.online = kind === 'device_online';
      draw();
      announce(`Device ${d.identity} is ${d.online ? 'online' : 'offline'}.`);
    } else if (kind.startsWith('device_') || (kind === 'execution_changed' && e.detail && e.detail.state === 'succeeded')) {
      reload();
    }
  }, reload);

  await load();
  root.replaceChildren(
    h('h1', null, 'Fleet devices'),
    subnav('devices'),
    badge,
    h('h2', { id: 'device-filter-title', class: 'visually-hidden' }, 'Filter devices'),
    form,
    info,
    slot,
  );
}

/** One device: status, labels (admins edit them), inventory, log. */
export async function device(root, id) {
  const slot = h('div');
  let d = null;

  async function label(key, value) {
    const body = { select: { devices: [id] }, action: 'label', labels: { [key]: value } };
    const dry = await api('POST', '/v1/fleet/devices:bulk', { ...body, dry_run: true });
    await api('POST', '/v1/fleet/devices:bulk', { ...body, expect_count: dry.matched });
  }

  function labelForm() {
    if (!fleetCan.admin()) return [];
    const key = h('input', { type: 'text', name: 'label-key', required: true, maxlength: '128', autocomplete: 'off', pattern: '[A-Za-z0-9_\\-]+' });
    const value = h('input', { type: 'text', name: 'label-value', maxlength: '128', autocomplete: 'off' });
    const form = h('form', { class: 'inline', 'aria-labelledby': 'label-title' },
      field('Label', key, 'letters, digits, _ and -'),
      field('Value', value, 'empty removes the label'),
      h('button', { type: 'submit' }, 'Set label'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await label(key.value, value.value);
        announce(value.value ? `Label ${key.value} set.` : `Label ${key.value} removed.`);
        form.reset();
        await load();
      } catch (e) {
        showError(describe(e));
      }
    });
    return [h('h2', { id: 'label-title' }, 'Labels'), form];
  }

  function draw() {
    const inv = d.inventory || {};
    const kernels = Object.entries(inv.kernels || {}).map(([channel, k]) => ({ channel, ...k }));
    slot.replaceChildren(
      stats([
        ['Status', d.status],
        ['Online', onlineCell(d)],
        ['Last seen', when(d.last_seen_ms)],
        ['Enrolled', when(d.created_ms)],
        ['Group', d.group || '—'],
        ['Agent', inv.agent_version || '—'],
        ['Free disk', fmt.bytes(inv.free_disk_bytes)],
        ['Health', inv.health ? `${inv.health.ok ? 'ok' : 'failing'}${inv.health.detail ? `: ${inv.health.detail}` : ''}` : '—'],
      ], 'Device'),
      h('div', { class: 'actions' }, decisions(d, load)),
      h('p', null, 'Labels: ', h('span', { id: 'device-labels' }, labelsText(d.labels))),
      ...labelForm(),
      table('Installed kernels (inventory)', [
        { title: 'Channel', cell: (k) => k.channel },
        { title: 'Version', num: true, cell: (k) => fmt.num(k.version) },
        { title: 'Kernel', cell: (k) => h('code', null, k.kernel_id || '—') },
      ], kernels),
      h('h2', null, 'Latest log lines'),
      d.log ? h('pre', { tabindex: '0', 'aria-label': 'Device log' }, d.log) : h('p', { class: 'muted' }, 'No log sent yet.'),
      h('p', { class: 'muted' }, 'Public key: ', h('code', null, d.public_key)),
    );
  }

  async function load() {
    try {
      d = await api('GET', `/v1/fleet/devices/${encodeURIComponent(id)}`);
      draw();
    } catch (e) {
      showError(describe(e));
    }
  }

  const reload = coalesce(load);
  const badge = live(root, (kind, e) => {
    if (e.device === id) reload();
  }, reload);
  d = await api('GET', `/v1/fleet/devices/${encodeURIComponent(id)}`);
  draw();
  root.replaceChildren(h('h1', null, `Device ${d.identity}`), subnav('devices'), badge, h('p', null, h('code', null, d.id)), slot);
}

/** Groups with member counts; admins create (static or dynamic) and delete them. */
export async function groups(root) {
  const slot = h('div');
  async function load() {
    const { groups: rows } = await api('GET', '/v1/fleet/groups');
    slot.replaceChildren(table('Device groups', [
      { title: 'Group', cell: (g) => h('a', { href: `#/fleet?group=${encodeURIComponent(g.name)}` }, g.name) },
      { title: 'Kind', cell: (g) => g.kind },
      { title: 'Filter', cell: (g) => (g.filter ? h('code', null, g.filter) : '—') },
      { title: 'Accepted devices', num: true, cell: (g) => fmt.num(g.devices) },
      { title: 'Created', cell: (g) => when(g.created_ms) },
      ...(fleetCan.admin() ? [{ title: 'Actions', cell: (g) => button('Delete', async () => {
        if (!window.confirm(`Delete group ${g.name}?`)) return;
        try {
          await api('DELETE', `/v1/fleet/groups/${encodeURIComponent(g.name)}`);
          announce(`Group ${g.name} deleted.`);
          await load();
        } catch (e) {
          showError(describe(e));
        }
      }, { class: 'danger', 'aria-label': `Delete group ${g.name}` }) }] : []),
    ], rows));
  }
  const parts = [];
  if (fleetCan.admin()) {
    const name = h('input', { type: 'text', name: 'group-name', required: true, maxlength: '128', autocomplete: 'off' });
    const filter = h('input', { type: 'text', name: 'group-filter', class: 'wide', autocomplete: 'off', placeholder: 'labels.region = "eu"' });
    const form = h('form', { class: 'inline', 'aria-labelledby': 'group-title' },
      field('Name', name),
      field('Filter (dynamic group)', filter, 'empty: a static group, which devices join by enrollment token or a bulk move'),
      h('button', { type: 'submit' }, 'Create group'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { name: name.value };
      if (filter.value.trim()) body.filter = filter.value.trim();
      try {
        const g = await api('POST', '/v1/fleet/groups', body);
        announce(`Group ${g.name} created (${g.kind}, ${g.devices} devices).`);
        form.reset();
        await load();
      } catch (e) {
        showError(describe(e));
      }
    });
    parts.push(h('h2', { id: 'group-title' }, 'Create a group'), form);
  }
  await load();
  root.replaceChildren(h('h1', null, 'Fleet groups'), subnav('groups'), slot, ...parts);
}
