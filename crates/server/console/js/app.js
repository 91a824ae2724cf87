// The console's shell: sign-in, navigation by role, and hash routes (`#/collections`,
// `#/records/docs`, …). Every view talks to the real API with the session's token.

import { can, current, describe, onSignedOut, restore, signIn, signOut, ApiError } from './api.js';
import { announce, button, clear, field, h, showError } from './dom.js';
import { completeSso, endSession, ssoPanel } from './sso.js';

/**
 * Views in navigation order; `admin` ones need an admin key of all collections, `all`
 * ones a key (any role) of all collections. Each view's module is loaded on its first
 * visit, so the sign-in form needs none of them.
 */
const VIEWS = [
  { path: 'overview', label: 'Overview', load: () => import('./views/overview.js') },
  { path: 'collections', label: 'Collections', load: () => import('./views/collections.js') },
  { path: 'records', label: 'Records', load: () => import('./views/records.js') },
  { path: 'search', label: 'Search', load: () => import('./views/search.js') },
  { path: 'map', label: 'Map', load: () => import('./views/map.js') },
  { path: 'kernels', label: 'Kernels', load: () => import('./views/kernels.js') },
  { path: 'programs', label: 'Programs', load: () => import('./views/programs.js'), all: true },
  { path: 'chat', label: 'Chat', load: () => import('./views/chat.js'), all: true },
  { path: 'keys', label: 'Keys', load: () => import('./views/keys.js'), admin: true },
  { path: 'audit', label: 'Audit log', load: () => import('./views/audit.js'), admin: true },
  { path: 'usage', label: 'Usage', load: () => import('./views/usage.js'), admin: true },
  { path: 'fleet', label: 'Fleet', load: () => import('./views/fleet.js'), all: true },
  { path: 'backups', label: 'Backups', load: () => import('./views/backups.js'), admin: true },
];

const main = document.getElementById('main');
let signInReason = null;
let rendering = 0;

function route() {
  const hash = location.hash.startsWith('#/') ? location.hash.slice(2) : 'overview';
  const [pathPart, queryPart] = hash.split('?');
  const [name, ...rest] = pathPart.split('/').map(decodeURIComponent);
  return { name: name || 'overview', args: rest.filter((x) => x !== ''), query: new URLSearchParams(queryPart || '') };
}

function visible(v) {
  return (!v.admin || can.admin()) && (!v.all || (!!current() && !current().collections));
}

function renderChrome(active) {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  const s = current();
  if (!s) {
    nav.hidden = true;
    who.hidden = true;
    clear(nav);
    clear(who);
    return;
  }
  nav.hidden = false;
  nav.replaceChildren(
    h(
      'ul',
      null,
      VIEWS.filter(visible).map((v) =>
        h('li', null, h('a', { href: `#/${v.path}`, 'aria-current': v.path === active ? 'page' : null }, v.label)),
      ),
    ),
  );
  const scope = s.collections ? s.collections.join(', ') : 'all collections';
  const user = s.user ? `${s.user} · ` : '';
  const until = new Date(s.expires_at).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit' });
  who.hidden = false;
  who.replaceChildren(
    h('span', { id: 'session-info' }, `Signed in: ${user}${s.role} · ${scope} · until ${until}`),
    button('Sign out', () => endSession(), { class: 'secondary' }),
  );
}

function renderSignIn() {
  rendering += 1; // a view still loading must not draw over the form
  renderChrome(null);
  document.title = 'Sign in · Kernelize console';
  const key = h('input', { type: 'password', name: 'api-key', autocomplete: 'off', spellcheck: 'false', required: true, class: 'wide' });
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { 'aria-labelledby': 'signin-title' },
    field('API key', key, 'A key such as kz_… (kernelize serve prints the first admin key). It is exchanged for a 15-minute token and not stored.'),
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    showError(null);
    try {
      const value = key.value;
      key.value = '';
      await signIn(value);
      signInReason = null;
      announce('Signed in.');
      if (location.hash.startsWith('#/')) await render();
      else location.hash = '#/overview'; // hashchange renders it
    } catch (e) {
      showError(describe(e));
      key.focus();
    } finally {
      submit.disabled = false;
    }
  });
  main.replaceChildren(
    h('h1', { id: 'signin-title', tabindex: '-1' }, 'Sign in'),
    signInReason ? h('p', { class: 'notice', id: 'signin-reason' }, signInReason) : null,
    form,
  );
  key.focus();
  ssoPanel().then((panel) => {
    if (panel && main.contains(form)) form.after(panel);
  });
}

async function render() {
  const ticket = ++rendering;
  if (!current()) {
    renderSignIn();
    return;
  }
  const r = route();
  let entry = VIEWS.find((v) => v.path === r.name);
  if (!entry) {
    showError(`There is no view "${r.name}".`);
    entry = VIEWS[0];
  } else if (!visible(entry)) {
    const need = entry.admin ? 'an admin key of all collections' : 'a key of all collections';
    showError(`The ${entry.label} view needs ${need}; this session is ${current().role}.`);
    entry = VIEWS[0];
  } else {
    showError(null);
  }
  renderChrome(entry.path);
  document.title = `${entry.label} · Kernelize console`;
  const body = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
  main.replaceChildren(body);
  try {
    await (await entry.load()).render(body, { args: r.args, query: r.query, rerender: render });
  } catch (e) {
    if (ticket !== rendering) return;
    if (e instanceof ApiError && e.status === 401) return; // the sign-in form is back
    body.replaceChildren(h('h1', { tabindex: '-1' }, entry.label), h('p', null, 'This view could not be loaded.'));
    showError(describe(e));
  }
  if (ticket !== rendering) return;
  body.removeAttribute('aria-busy');
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    if (document.activeElement === document.body || !main.contains(document.activeElement)) heading.focus();
  }
}

onSignedOut((reason) => {
  signInReason = reason || null;
  if (reason) showError(reason);
  else {
    showError(null);
    announce('Signed out.');
  }
  renderSignIn();
});

window.addEventListener('hashchange', () => {
  if (location.hash.startsWith('#/')) render();
});

// The skip link targets <main> without touching the route.
document.querySelector('.skip').addEventListener('click', (ev) => {
  ev.preventDefault();
  main.focus();
});

restore();
const ssoRefused = await completeSso();
if (ssoRefused) signOut(ssoRefused);
render();

