// The API client and the session. An API key is used once, to mint a short-lived token
// (POST /v1/tokens), and never stored; the token lives in memory and sessionStorage (this
// tab only) until it expires or the user signs out.

const STORE = 'kernelize.session';
const TOKEN_TTL_SECS = 900;
const ROLES = ['reader', 'writer', 'admin'];

let session = null;
let expiryTimer = null;
const signedOutListeners = [];

/** An error answer of the API (`{code, message, request_id}`), or a network failure. */
export class ApiError extends Error {
  constructor(status, code, message, requestId, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

/** What to tell a person about `err`. */
export function describe(err) {
  if (!(err instanceof ApiError)) return `Unexpected error: ${err && err.message ? err.message : err}`;
  const rid = err.requestId ? ` (request ${err.requestId})` : '';
  switch (err.status) {
    case 0:
      return `The server could not be reached: ${err.message}`;
    case 401:
      return `Not signed in, or the server refused the credentials: ${err.message}. Sign in again with an API key.`;
    case 403:
      return `Not allowed for this key: ${err.message}${rid}`;
    case 429: {
      const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : ' Try again shortly.';
      return `Too many requests: ${err.message}.${wait}`;
    }
    default:
      return `${err.message} [${err.code}, HTTP ${err.status}]${rid}`;
  }
}

async function send(method, path, { body, credential, accept = 'json', query } = {}) {
  const headers = {};
  if (credential) headers.Authorization = `Bearer ${credential}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const qs = q.toString();
    if (qs) url += `?${qs}`;
  }
  let resp;
  try {
    resp = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', e.message || String(e));
  }
  if (accept === 'blob' && resp.ok) return resp.blob();
  const text = await resp.text();
  if (!resp.ok) {
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
    const retry = resp.headers.get('retry-after');
    throw new ApiError(
      resp.status,
      parsed && parsed.code ? parsed.code : 'http_error',
      parsed && parsed.message ? parsed.message : `HTTP ${resp.status}`,
      parsed && parsed.request_id ? parsed.request_id : resp.headers.get('x-request-id'),
      retry ? Number(retry) : undefined,
    );
  }
  if (accept === 'text') return text;
  return text ? JSON.parse(text) : null;
}

/** A public route (no credentials). */
export function publicGet(path, accept = 'json') {
  return send('GET', path, { accept });
}

/**
 * A call with the session's token. A 401 ends the session (the token expired, its key
 * was revoked, or it was not ours) and the sign-in form comes back with the reason.
 */
export async function api(method, path, body, opts = {}) {
  if (!session) throw new ApiError(401, 'unauthenticated', 'not signed in');
  try {
    return await send(method, path, { body, credential: session.token, ...opts });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signOut(describe(e));
    throw e;
  }
}

/** A call with a credential given for this one call (minting a token with a key). */
export function withCredential(credential, method, path, body) {
  return send(method, path, { body, credential });
}

function save() {
  try {
    if (session) sessionStorage.setItem(STORE, JSON.stringify(session));
    else sessionStorage.removeItem(STORE);
  } catch {
    // Storage may be disabled: the session then lives in memory only.
  }
}

function arm() {
  clearTimeout(expiryTimer);
  if (!session) return;
  const left = Date.parse(session.expires_at) - Date.now();
  expiryTimer = setTimeout(() => signOut('Your session expired. Sign in again with your API key.'), Math.max(0, left));
}

/** The session left in this tab by an earlier page load, if it has not expired. */
export function restore() {
  let stored = null;
  try {
    stored = JSON.parse(sessionStorage.getItem(STORE) || 'null');
  } catch {
    stored = null;
  }
  if (!stored || typeof stored.token !== 'string' || !(Date.parse(stored.expires_at) > Date.now())) {
    session = null;
    save();
    return null;
  }
  session = stored;
  arm();
  return session;
}

/** Exchanges an API key for a token; the key is not kept anywhere. */
export async function signIn(key) {
  const t = await send('POST', '/v1/tokens', { body: { ttl_secs: TOKEN_TTL_SECS }, credential: key.trim() });
  session = { token: t.token, role: t.role, collections: t.collections || null, expires_at: t.expires_at };
  save();
  arm();
  return session;
}

/**
 * Adopts a session made elsewhere (single sign-on: the body of POST /v1/sso/session,
 * `{token, role, collections, expires_at, user, via}`).
 */
export function adopt(t) {
  session = { token: t.token, role: t.role, collections: t.collections || null, expires_at: t.expires_at, user: t.user || null, via: t.via || null };
  save();
  arm();
  return session;
}

/** Ends the session; `reason` is shown on the sign-in form (none: the user signed out). */
export function signOut(reason) {
  const was = session;
  session = null;
  clearTimeout(expiryTimer);
  save();
  if (was || reason) for (const f of signedOutListeners) f(reason);
}

/** Calls `f(reason)` whenever the session ends. */
export function onSignedOut(f) {
  signedOutListeners.push(f);
}

/** The current session: `{token, role, collections, expires_at}` or null. */
export function current() {
  return session;
}

function rank(role) {
  return ROLES.indexOf(role);
}

/** What the session's role and scope allow (the server checks again on every call). */
export const can = {
  /** Server-wide administration: keys, usage, audit, metrics, backups. */
  admin() {
    return !!session && session.role === 'admin' && !session.collections;
  },
  /** Writing to `collection` (records, drop), or creating collections when omitted. */
  write(collection) {
    if (!session || rank(session.role) < rank('writer')) return false;
    return !collection || !session.collections || session.collections.includes(collection);
  },
};
