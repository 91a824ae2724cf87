// The fleet (keys scoped to all collections): devices, groups, releases, deployments and
// each device's execution timeline, kept current by the fleet's server-sent events
// (GET /v1/fleet/events) — no polling. Routes: #/fleet (devices), #/fleet/devices/{id},
// #/fleet/groups, #/fleet/releases, #/fleet/deployments, #/fleet/deployments/{id},
// #/fleet/deployments/{id}/{device}. Controls follow the role: readers look, writers
// publish releases and create deployments, admins decide devices, label, group, approve,
// pause, resume, promote and abort (the server checks every call again).

import { current } from '../api.js';
import { h } from '../dom.js';
import { follow } from '../sse.js';
import * as devices from './fleet-devices.js';
import * as deployments from './fleet-deployments.js';

const ROLES = ['reader', 'writer', 'admin'];

/** What the session may do in the fleet (the server checks again). */
export const fleetCan = {
  read() {
    const s = current();
    return !!s && !s.collections;
  },
  write() {
    const s = current();
    return !!s && !s.collections && ROLES.indexOf(s.role) >= 1;
  },
  admin() {
    const s = current();
    return !!s && !s.collections && s.role === 'admin';
  },
};

const TABS = [
  ['devices', 'Devices'],
  ['groups', 'Groups'],
  ['releases', 'Releases'],
  ['deployments', 'Deployments'],
];

/** The fleet's sub-navigation, `active` marked as the current page. */
export function subnav(active) {
  return h('nav', { 'aria-label': 'Fleet', class: 'subnav' },
    h('ul', null, TABS.map(([path, label]) =>
      h('li', null, h('a', { href: path === 'devices' ? '#/fleet' : `#/fleet/${path}`, 'aria-current': path === active ? 'page' : null }, label)))));
}

/**
 * Follows the fleet's events while `root` is shown: `onEvent(kind, event)` for each, and
 * `refresh()` each time the stream is live (again) and after a `lagged` notice. The returned
 * element shows the stream's state (`#fleet-live`).
 */
export function live(root, onEvent, refresh) {
  const badge = h('p', { id: 'fleet-live', class: 'muted live', role: 'status' }, 'Live updates: connecting…');
  follow('/v1/fleet/events', {
    view: root,
    onState: (st) => {
      badge.textContent = st === 'live' ? 'Live updates: on' : `Live updates: ${st}`;
      badge.dataset.state = st === 'live' ? 'live' : 'off';
      // What happened before the stream was (re)opened is read again, once.
      if (st === 'live') refresh();
    },
    onEvent: (e) => {
      if (e.type === 'lagged') refresh();
      else if (e.data && typeof e.data === 'object') onEvent(e.type, e.data);
    },
  });
  return badge;
}

/**
 * `f` run at most once per `ms`, never twice at once: bursts of events cost one reload.
 */
export function coalesce(f, ms = 250) {
  let timer = null;
  let running = false;
  let again = false;
  const run = async () => {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await f();
    } finally {
      running = false;
      if (again) {
        again = false;
        timer = setTimeout(run, ms);
      }
    }
  };
  return () => {
    if (!timer) timer = setTimeout(run, ms);
  };
}

/** Unix ms as the console shows times. */
export function when(ms) {
  if (ms === null || ms === undefined) return '—';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export async function render(root, ctx) {
  const [page, ...rest] = ctx.args;
  if (!fleetCan.read()) {
    root.replaceChildren(h('h1', null, 'Fleet'), h('p', null, 'The fleet needs a key scoped to all collections.'));
    return;
  }
  switch (page || 'devices') {
    case 'devices':
      if (rest[0]) await devices.device(root, rest[0]);
      else await devices.list(root, ctx);
      return;
    case 'groups':
      await devices.groups(root);
      return;
    case 'releases':
      await deployments.releases(root);
      return;
    case 'deployments':
      if (rest[0] && rest[1]) await deployments.execution(root, rest[0], rest[1]);
      else if (rest[0]) await deployments.deployment(root, rest[0]);
      else await deployments.list(root);
      return;
    default:
      root.replaceChildren(h('h1', null, 'Fleet'), subnav(null), h('p', null, `There is no fleet page "${page}".`));
  }
}
