// Single sign-on (when the server has an [sso] section): the sign-in page's button, the
// return from the OpenID provider, and sign-out that revokes the session on the server.
//
// The provider sends the browser back to /v1/sso/callback; the server verifies the
// sign-in and redirects to #/sso, having set a one-time HttpOnly cookie. The console then
// collects its short-lived token with POST /v1/sso/session: the token arrives in a
// response body (never in a URL) and is kept like an API-key session (memory and
// sessionStorage). A refused sign-in comes back as #/sso?error=<code>.

import { adopt, api, current, signOut } from './api.js';
import { h } from './dom.js';

/** What a person is told for each refusal code of the callback. */
const MESSAGES = {
  no_group:
    'You signed in at your identity provider, but your account is in none of the groups that this server gives access to. Ask an administrator to add you to one.',
  state: 'The sign-in could not be matched to this browser: it expired, was already used, or was started elsewhere. Start it again.',
  provider: 'The identity provider refused the sign-in or could not be reached. Try again, or sign in with an API key.',
  id_token: "The identity provider's answer did not pass verification. Tell an administrator: the audit log has the reason.",
  busy: 'Too many sign-ins are in progress. Try again in a minute.',
  disabled: 'Single sign-on is not configured on this server.',
  internal: 'The server could not complete the sign-in. Try again.',
};

/**
 * Finishes a return from the provider when the page is one (#/sso…): adopts the session,
 * or returns the message to show on the sign-in form.
 */
export async function completeSso() {
  if (!/^#\/sso(\?|$)/.test(location.hash)) return null;
  const query = new URLSearchParams(location.hash.split('?')[1] || '');
  history.replaceState(null, '', `${location.pathname}#/overview`);
  const code = query.get('error');
  if (code) return MESSAGES[code] || `Single sign-on failed (${code}).`;
  try {
    const r = await fetch('/v1/sso/session', { method: 'POST', credentials: 'same-origin', cache: 'no-store' });
    const body = await r.json().catch(() => null);
    if (!r.ok || !body || typeof body.token !== 'string') {
      return `Single sign-on could not be completed: ${body && body.message ? body.message : `HTTP ${r.status}`}.`;
    }
    adopt(body);
    return null;
  } catch (e) {
    return `The server could not be reached: ${e.message || e}`;
  }
}

/** The sign-in page's single sign-on panel, or null when the server offers none. */
export async function ssoPanel() {
  let info = null;
  try {
    const r = await fetch('/v1/sso/config', { credentials: 'omit', cache: 'no-store' });
    info = r.ok ? await r.json() : null;
  } catch {
    info = null;
  }
  if (!info || !info.enabled) return null;
  return h(
    'section',
    { class: 'panel', 'aria-labelledby': 'sso-title', id: 'sso-panel' },
    h('h2', { id: 'sso-title' }, 'Single sign-on'),
    h('p', null, "Sign in with your organisation's account; the groups it is in decide what you may do here."),
    h('a', { class: 'button', href: '/v1/sso/login', id: 'sso-login' }, info.label || 'Single sign-on'),
  );
}

/** Signs out; a single sign-on session is revoked on the server first. */
export async function endSession() {
  const s = current();
  if (s && s.via === 'sso') {
    try {
      await api('POST', '/v1/sso/logout');
    } catch {
      // An expired or already revoked session: nothing is left to revoke.
    }
  }
  signOut();
}
