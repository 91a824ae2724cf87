// Fleet releases and deployments: publish a built kernel to a channel (writers), create a
// deployment with phases (writers), its phase progress and per-device states as they
// change (server-sent events), approve / pause / resume / promote / abort (admins), and
// one device's execution timeline. See fleet.js for the routes and live updates.

import { api, describe } from '../api.js';
import { announce, button, field, fmt, h, select, showError, stats, table } from '../dom.js';
import { coalesce, fleetCan, live, subnav, when } from './fleet.js';

const STATE_LABEL = {
  awaiting_approval: 'awaiting approval',
  running: 'running',
  paused: 'paused',
  aborted: 'aborted',
  completed: 'completed',
};
const GOOD = new Set(['succeeded', 'completed', 'running']);
const BAD = new Set(['failed', 'timed_out', 'health_failed', 'rejected', 'aborted', 'rolled_back']);

function stateTag(state) {
  const cls = GOOD.has(state) ? 'good' : BAD.has(state) ? 'bad' : null;
  return h('span', { class: cls, 'data-state': state }, STATE_LABEL[state] || state.replace(/_/g, ' '));
}

function targetText(t) {
  if (!t || typeof t !== 'object') return String(t);
  if (t.group !== undefined) return `group ${t.group}`;
  if (t.filter !== undefined) return `filter ${t.filter}`;
  if (t.devices !== undefined) return `${t.devices.length} listed devices`;
  return JSON.stringify(t);
}

function phaseText(p) {
  return p.percent !== undefined ? `${p.percent}%` : `${p.count} device${p.count === 1 ? '' : 's'}`;
}

/** "1, 10%, 100%" → phases: a bare number is a count, `N%` a share (both cumulative). */
export function parsePhases(text, pauseBetween, bake) {
  const parts = text.split(',').map((x) => x.trim()).filter((x) => x !== '');
  if (parts.length === 0) throw new Error('give at least one phase, such as 100%');
  return parts.map((p, i) => {
    const last = i === parts.length - 1;
    const phase = { bake_seconds: bake };
    const m = /^(\d+(?:\.\d+)?)\s*%$/.exec(p);
    if (m) phase.percent = Number(m[1]);
    else if (/^\d+$/.test(p)) phase.count = Number(p);
    else throw new Error(`phase "${p}" is neither a count nor a percentage`);
    if (pauseBetween && !last) phase.on_success = 'pause';
    return phase;
  });
}

// ---------------------------------------------------------------- releases

export async function releases(root) {
  const slot = h('div');
  async function load() {
    const { releases: rows } = await api('GET', '/v1/fleet/releases');
    slot.replaceChildren(table('Releases, newest first', [
      { title: 'Channel', cell: (r) => r.channel },
      { title: 'Version', num: true, cell: (r) => fmt.num(r.version) },
      { title: 'Kernel', cell: (r) => h('a', { href: `#/kernels/${encodeURIComponent(r.kernel_id)}` }, r.kernel_id) },
      { title: 'Size', num: true, cell: (r) => fmt.bytes(r.length) },
      { title: 'Deltas', cell: (r) => (r.deltas.length ? r.deltas.map((d) => `from ${d.from_release} (${fmt.bytes(d.length)})`).join(', ') : '—') },
      { title: 'SHA-256', cell: (r) => h('code', null, `${r.sha256.slice(0, 16)}…`) },
      { title: 'Published', cell: (r) => `${when(r.created_ms)} by ${r.created_by}` },
      { title: 'Id', cell: (r) => h('code', null, r.id) },
    ], rows));
    return rows;
  }
  const rows = await load();
  const parts = [];
  if (fleetCan.write()) {
    const { kernels } = await api('GET', '/v1/kernels');
    const built = kernels.filter((k) => k.state === 'succeeded' && !k.orphaned);
    if (built.length === 0) {
      parts.push(h('h2', null, 'Publish a release'), h('p', null, 'Build a kernel first (Kernels): a release publishes a built kernel.'));
    } else {
      const kernel = select({ name: 'release-kernel' }, built.map((k) => [k.id, `${k.id} (${k.collection}, ${fmt.bytes(k.bytes)})`]), built[0].id);
      const channel = h('input', { type: 'text', name: 'channel', required: true, value: 'stable', maxlength: '128', autocomplete: 'off' });
      const nextVersion = () => 1 + Math.max(0, ...rows.filter((r) => r.channel === channel.value).map((r) => r.version));
      const version = h('input', { type: 'number', name: 'version', required: true, min: '1', step: '1', class: 'narrow', value: String(nextVersion()) });
      channel.addEventListener('change', () => {
        version.value = String(nextVersion());
      });
      const golden = h('textarea', { name: 'golden', class: 'mono', placeholder: '[{"vector": [...], "k": 5, "expected_ids": ["r0"], "min_overlap": 1}]' });
      const form = h('form', { 'aria-labelledby': 'publish-title' },
        h('div', { class: 'actions' }, field('Kernel', kernel), field('Channel', channel), field('Version', version)),
        field('Golden queries (JSON, optional)', golden, 'devices run them on the staged kernel before switching to it'),
        h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Publish release')));
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const body = { kernel_id: kernel.value, channel: channel.value, version: Number(version.value) };
        if (golden.value.trim()) {
          try {
            body.golden_queries = JSON.parse(golden.value);
          } catch (e) {
            showError(`Golden queries: not JSON (${e.message}).`);
            golden.focus();
            return;
          }
        }
        try {
          const r = await api('POST', '/v1/fleet/releases', body);
          announce(`Release ${r.channel} v${r.version} published.`);
          const now = await load();
          rows.splice(0, rows.length, ...now);
          version.value = String(nextVersion());
        } catch (e) {
          showError(describe(e));
        }
      });
      parts.push(h('h2', { id: 'publish-title' }, 'Publish a release'), form);
    }
  }
  root.replaceChildren(h('h1', null, 'Fleet releases'), subnav('releases'), slot, ...parts);
}

// ---------------------------------------------------------------- deployments

function progressOf(d) {
  const done = ['succeeded', 'failed', 'timed_out', 'health_failed', 'rolled_back', 'rejected', 'canceled']
    .reduce((n, s) => n + (d.counts[s] || 0), 0);
  return { done, of: d.target_count };
}

export async function list(root) {
  const slot = h('div', { id: 'deployment-list' });
  async function load() {
    const { deployments: rows } = await api('GET', '/v1/fleet/deployments');
    slot.replaceChildren(table('Deployments', [
      { title: 'Name', cell: (d) => h('a', { href: `#/fleet/deployments/${encodeURIComponent(d.id)}` }, d.name) },
      { title: 'State', cell: (d) => stateTag(d.state) },
      { title: 'Phase', cell: (d) => `${Math.min(d.current_phase + 1, d.plan.phases.length)} of ${d.plan.phases.length}` },
      { title: 'Progress', cell: (d) => {
        const p = progressOf(d);
        return h('span', null, h('progress', { max: String(Math.max(1, p.of)), value: String(p.done), 'aria-label': `Devices finished in ${d.name}` }), ` ${p.done} of ${p.of}`);
      } },
      { title: 'Succeeded', num: true, cell: (d) => fmt.num(d.counts.succeeded || 0) },
      { title: 'Release', cell: (d) => h('code', null, d.release_id) },
      { title: 'Target', cell: (d) => targetText(d.target) },
      { title: 'Created', cell: (d) => `${when(d.created_ms)} by ${d.created_by}` },
    ], rows, (d) => ({ 'data-deployment': d.id })));
  }
  const reload = coalesce(() => load().catch((e) => showError(describe(e))));
  const badge = live(root, (kind, e) => {
    if (e.deployment) reload();
  }, reload);
  await load();
  const parts = fleetCan.write() ? await createForm() : [];
  root.replaceChildren(h('h1', null, 'Fleet deployments'), subnav('deployments'), badge, slot, ...parts);
}

async function createForm() {
  const [{ releases: rels }, { groups }] = await Promise.all([api('GET', '/v1/fleet/releases'), api('GET', '/v1/fleet/groups')]);
  if (rels.length === 0) return [h('h2', null, 'Create a deployment'), h('p', null, 'Publish a release first.')];
  const name = h('input', { type: 'text', name: 'deployment-name', required: true, maxlength: '128', autocomplete: 'off' });
  const release = select({ name: 'deployment-release' }, rels.map((r) => [r.id, `${r.channel} v${r.version} (${r.id})`]), rels[0].id);
  const targetKind = select({ name: 'target-kind' }, [['filter', 'Devices matching a filter'], ...(groups.length ? [['group', 'A group']] : [])], 'filter');
  const targetFilter = h('input', { type: 'text', name: 'target-filter', class: 'wide', autocomplete: 'off', value: 'status = "accepted"' });
  const targetGroup = select({ name: 'target-group' }, groups.length ? groups.map((g) => g.name) : [['', 'none']], groups[0] ? groups[0].name : '');
  const groupField = field('Group', targetGroup);
  const filterField = field('Target filter', targetFilter, 'the filter language over the device document');
  groupField.hidden = true;
  targetKind.addEventListener('change', () => {
    groupField.hidden = targetKind.value !== 'group';
    filterField.hidden = targetKind.value !== 'filter';
  });
  const phases = h('input', { type: 'text', name: 'phases', required: true, value: '10%, 100%', autocomplete: 'off' });
  const pause = h('input', { type: 'checkbox', name: 'pause-between' });
  const bake = h('input', { type: 'number', name: 'bake', min: '0', step: '1', value: '0', class: 'narrow' });
  const timeout = h('input', { type: 'number', name: 'timeout', min: '1', step: '1', value: '3600', class: 'narrow' });
  const abortPolicy = select({ name: 'abort-policy' }, [['keep', 'Devices keep what they have'], ['revert', 'Devices go back to their previous kernel']], 'keep');
  const form = h('form', { 'aria-labelledby': 'create-deployment-title' },
    h('div', { class: 'actions' }, field('Name', name), field('Release', release)),
    h('div', { class: 'actions' }, field('Target', targetKind), filterField, groupField),
    h('div', { class: 'actions' },
      field('Phases', phases, 'cumulative: a count (1) or a share (10%), comma-separated; the last is usually 100%'),
      field('Bake (seconds)', bake),
      field('In-progress timeout (seconds)', timeout),
      field('On abort', abortPolicy)),
    field('Pause after each phase but the last (until promoted)', pause),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create deployment')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let plan;
    try {
      plan = {
        phases: parsePhases(phases.value, pause.checked, Number(bake.value) || 0),
        in_progress_timeout_seconds: Number(timeout.value) || 3600,
        abort_policy: abortPolicy.value,
      };
    } catch (e) {
      showError(`Phases: ${e.message}`);
      phases.focus();
      return;
    }
    const target = targetKind.value === 'group' ? { group: targetGroup.value } : { filter: targetFilter.value };
    try {
      const d = await api('POST', '/v1/fleet/deployments', { name: name.value, release_id: release.value, target, plan });
      announce(`Deployment ${d.name} created; it waits for approval by another admin.`);
      location.hash = `#/fleet/deployments/${encodeURIComponent(d.id)}`;
    } catch (e) {
      showError(describe(e));
    }
  });
  return [h('h2', { id: 'create-deployment-title' }, 'Create a deployment'), form];
}

/** Per phase: its devices and how many finished, from the executions. */
function phaseRows(d, execs) {
  return d.plan.phases.map((p, i) => {
    const mine = execs.filter((e) => e.phase === i);
    const count = (pred) => mine.filter(pred).length;
    const finished = count((e) => !['queued', 'offered', 'downloading', 'downloaded', 'verifying', 'trial'].includes(e.state));
    const status = d.state === 'awaiting_approval' ? 'not started'
      : i < d.current_phase || (d.state === 'completed' && i <= d.current_phase) ? 'done'
        : i === d.current_phase ? (d.state === 'running' ? 'current' : d.state) : 'waiting';
    return {
      index: i,
      plan: p,
      devices: mine.length,
      finished,
      succeeded: count((e) => e.state === 'succeeded'),
      failed: count((e) => BAD.has(e.state)),
      status,
    };
  });
}

function deploymentActions(d, after) {
  if (!fleetCan.admin()) return [];
  const act = (label, path, body, cls, confirmText) =>
    button(label, async () => {
      if (confirmText && !window.confirm(confirmText)) return;
      try {
        const now = await api('POST', `/v1/fleet/deployments/${encodeURIComponent(d.id)}/${path}`, body);
        announce(`Deployment ${d.name}: ${STATE_LABEL[now.state] || now.state}.`);
        await after();
      } catch (e) {
        showError(describe(e));
      }
    }, { class: cls });
  const out = [];
  if (d.state === 'awaiting_approval') {
    out.push(act('Approve', 'approve', { digest: d.digest }, null, null));
  }
  if (d.state === 'running') out.push(act('Pause', 'pause', undefined, 'secondary', null));
  if (d.state === 'paused') out.push(act('Resume', 'resume', undefined, null, null));
  if (d.state === 'running' || d.state === 'paused') {
    const last = d.current_phase + 1 >= d.plan.phases.length;
    out.push(act(last ? 'Promote (complete)' : 'Promote to next phase', 'promote', undefined, 'secondary', null));
  }
  if (['running', 'paused', 'awaiting_approval'].includes(d.state)) {
    out.push(act('Abort', 'abort', undefined, 'danger', `Abort deployment ${d.name}? Devices not offered yet are canceled${d.plan.abort_policy === 'revert' ? '; touched devices go back to their previous kernel' : ''}.`));
  }
  return out;
}

export async function deployment(root, id) {
  const head = h('div');
  const phasesSlot = h('div', { id: 'phases' });
  const execSlot = h('div', { id: 'executions' });
  let d = null;
  let execs = [];

  function draw() {
    const approval = d.state === 'awaiting_approval'
      ? h('p', { class: 'notice', id: 'approval-note' }, `Waiting for approval by an admin other than ${d.created_by}. Approving confirms digest `, h('code', null, d.digest.slice(0, 16)), ' (the plan and target as shown).')
      : null;
    head.replaceChildren(...[
      stats([
        ['State', stateTag(d.state)],
        ['Phase', `${Math.min(d.current_phase + 1, d.plan.phases.length)} of ${d.plan.phases.length}`],
        ['Targets', d.started_ms ? fmt.num(d.target_count) : 'fixed at approval'],
        ['Succeeded', fmt.num(d.counts.succeeded || 0)],
        ['Release', h('code', null, d.release_id)],
        ['Target', targetText(d.target)],
        ['Created by', d.created_by],
        ['Approved by', d.approved_by || '—'],
      ], 'Deployment'),
      d.reason ? h('p', { id: 'deployment-reason' }, `Reason: ${d.reason}`) : null,
      approval,
      h('div', { class: 'actions', id: 'deployment-actions' }, deploymentActions(d, load)),
    ].filter((x) => x !== null));
    const prows = phaseRows(d, execs);
    phasesSlot.replaceChildren(table('Phases', [
      { title: 'Phase', cell: (p) => String(p.index + 1) },
      { title: 'Reaches', cell: (p) => phaseText(p.plan) },
      { title: 'Bake', cell: (p) => `${p.plan.bake_seconds || 0} s${p.plan.on_success === 'pause' ? ', then pause' : ''}` },
      { title: 'Status', cell: (p) => p.status },
      { title: 'Progress', cell: (p) => h('span', null, h('progress', { max: String(Math.max(1, p.devices)), value: String(p.finished), 'aria-label': `Phase ${p.index + 1} devices finished` }), ` ${p.finished} of ${p.devices}`) },
      { title: 'Succeeded', num: true, cell: (p) => fmt.num(p.succeeded) },
      { title: 'Failed', num: true, cell: (p) => fmt.num(p.failed) },
    ], prows, (p) => ({ 'data-phase': String(p.index) })));
    execSlot.replaceChildren(table('Devices in this deployment', [
      { title: 'Device', cell: (e) => h('a', { href: `#/fleet/deployments/${encodeURIComponent(id)}/${encodeURIComponent(e.device_id)}`, 'aria-label': `Timeline of ${e.device_id}` }, h('code', null, e.device_id)) },
      { title: 'Phase', num: true, cell: (e) => String(e.phase + 1) },
      { title: 'State', cell: (e) => stateTag(e.state) },
      { title: 'Attempts', num: true, cell: (e) => fmt.num(e.attempts) },
      { title: 'Bytes', num: true, cell: (e) => fmt.bytes(e.bytes) },
      { title: 'Since', cell: (e) => when(e.since_ms) },
      { title: 'Reason', cell: (e) => e.reason || '' },
    ], execs, (e) => ({ 'data-device': e.device_id, 'data-state': e.state })));
  }

  async function load() {
    try {
      const [dd, ex] = await Promise.all([
        api('GET', `/v1/fleet/deployments/${encodeURIComponent(id)}`),
        api('GET', `/v1/fleet/deployments/${encodeURIComponent(id)}/executions?limit=1000`),
      ]);
      d = dd;
      execs = ex.executions;
      draw();
    } catch (e) {
      showError(describe(e));
    }
  }

  const reload = coalesce(load);
  const badge = live(root, (kind, e) => {
    if (e.deployment !== id) return;
    if (kind === 'execution_changed' && e.device && e.detail) {
      // Show the device's new state at once; counts and phases follow with the reload.
      const x = execs.find((r) => r.device_id === e.device);
      if (x) {
        x.state = e.detail.state;
        x.since_ms = e.at_ms;
        draw();
      }
    }
    reload();
  }, reload);
  d = await api('GET', `/v1/fleet/deployments/${encodeURIComponent(id)}`);
  execs = (await api('GET', `/v1/fleet/deployments/${encodeURIComponent(id)}/executions?limit=1000`)).executions;
  draw();
  root.replaceChildren(
    h('h1', null, `Deployment ${d.name}`),
    subnav('deployments'),
    badge,
    head,
    h('h2', null, 'Phase progress'),
    phasesSlot,
    h('h2', null, 'Devices'),
    execSlot,
  );
}

/** One device's execution in one deployment: its timeline of states, and its log. */
export async function execution(root, id, device) {
  const slot = h('div');
  async function load() {
    const e = await api('GET', `/v1/fleet/deployments/${encodeURIComponent(id)}/executions/${encodeURIComponent(device)}`);
    slot.replaceChildren(
      stats([
        ['State', stateTag(e.state)],
        ['Phase', String(e.phase + 1)],
        ['Attempts', fmt.num(e.attempts)],
        ['Bytes this attempt', fmt.bytes(e.bytes)],
        ['Finished', when(e.finished_ms)],
        ['Previous release', e.from_release || '—'],
        ['Revert', e.revert || '—'],
      ], 'Execution'),
      h('h2', null, 'Timeline'),
      h('ol', { class: 'timeline', id: 'timeline' }, e.history.map((t) =>
        h('li', { 'data-state': t.state }, h('time', { datetime: new Date(t.at_ms).toISOString() }, when(t.at_ms)), ' ', stateTag(t.state), t.reason ? ` — ${t.reason}` : ''))),
      h('h2', null, 'Device log'),
      e.log ? h('pre', { tabindex: '0', 'aria-label': 'Execution log' }, e.log) : h('p', { class: 'muted' }, 'No log lines.'),
    );
  }
  const reload = coalesce(() => load().catch((err) => showError(describe(err))));
  const badge = live(root, (kind, e) => {
    if (e.deployment === id && (e.device === device || !e.device)) reload();
  }, reload);
  await load();
  root.replaceChildren(
    h('h1', null, `Execution of ${device}`),
    subnav('deployments'),
    h('p', { class: 'actions' }, h('a', { href: `#/fleet/deployments/${encodeURIComponent(id)}` }, 'Back to the deployment'), h('a', { href: `#/fleet/devices/${encodeURIComponent(device)}` }, 'The device')),
    badge,
    slot,
  );
}
