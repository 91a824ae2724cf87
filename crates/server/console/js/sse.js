// Server-sent events with the session's token. The browser's EventSource cannot send an
// Authorization header, so the stream is read with fetch() and a ReadableStream and parsed
// here (the text/event-stream format: `id:`, `event:`, `data:`, `retry:`, blank line).
// A dropped stream is reopened with `Last-Event-ID` after a growing delay; a stream the
// server ends on purpose (a finished job) is reopened only if `until` has not said stop.
// Bounded: one unparsed line or one event may hold at most MAX_PENDING characters (then
// the stream is dropped and reopened), and streams close when the session ends or when the
// view that opened them is gone.

import { ApiError, current, describe, onSignedOut, signOut } from './api.js';

/** Largest unparsed text (one line, or one event's data) kept per stream, characters. */
const MAX_PENDING = 1 << 20;
const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 30000;

const open = new Set();
onSignedOut(() => {
  for (const s of [...open]) s.close();
});

/**
 * Follows the event stream at `path` (a GET of the API). `onEvent({type, id, data})`
 * gets each event (`data` parsed as JSON when it is JSON); `onState(text)` hears about
 * connecting, open, reconnects and errors; `until(event)` returning true ends it after that
 * event; `view`: an element — the stream closes once it has left the document.
 * Returns `{close()}`.
 */
export function follow(path, { onEvent, onState = () => {}, until = () => false, view = null } = {}) {
  let lastId = null;
  let closed = false;
  let delay = FIRST_DELAY_MS;
  let controller = null;
  let timer = null;

  const sub = {
    close() {
      if (closed) return;
      closed = true;
      open.delete(sub);
      clearTimeout(timer);
      if (controller) controller.abort();
      window.removeEventListener('hashchange', onRoute);
    },
    get closed() {
      return closed;
    },
  };
  function onRoute() {
    // The router replaces the view after the hash changes: check once it has.
    setTimeout(() => {
      if (view && !view.isConnected) sub.close();
    }, 0);
  }
  window.addEventListener('hashchange', onRoute);
  open.add(sub);

  function retryLater(ms) {
    if (closed) return;
    if (view && !view.isConnected) {
      sub.close();
      return;
    }
    onState(`reconnecting in ${Math.round(ms / 100) / 10} s`);
    timer = setTimeout(connect, ms);
    delay = Math.min(MAX_DELAY_MS, delay * 2);
  }

  async function connect() {
    if (closed) return;
    const s = current();
    if (!s) {
      sub.close();
      return;
    }
    controller = new AbortController();
    const headers = { Authorization: `Bearer ${s.token}`, Accept: 'text/event-stream' };
    if (lastId !== null) headers['Last-Event-ID'] = lastId;
    onState('connecting');
    let resp;
    try {
      resp = await fetch(path, { headers, cache: 'no-store', credentials: 'omit', signal: controller.signal });
    } catch (e) {
      if (!closed) retryLater(delay);
      return;
    }
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      const retry = resp.headers.get('retry-after');
      const err = new ApiError(resp.status, body.code || 'http_error', body.message || `HTTP ${resp.status}`, body.request_id, retry ? Number(retry) : undefined);
      if (resp.status === 401) {
        signOut(describe(err));
        return;
      }
      if (resp.status === 429 || resp.status === 503) {
        retryLater(Math.max(delay, (err.retryAfter || 1) * 1000));
        return;
      }
      onState(`stopped: ${describe(err)}`);
      sub.close();
      return;
    }
    delay = FIRST_DELAY_MS;
    onState('live');
    const ended = await read(resp.body);
    if (closed) return;
    if (ended === 'done') {
      sub.close();
      return;
    }
    retryLater(delay);
  }

  /** Reads events until the stream ends; 'done' when `until` said so. */
  async function read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = '';
    let ev = { type: 'message', data: [], size: 0, id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return 'eof';
        pending += value;
        let nl;
        while ((nl = pending.search(/\r\n|\r|\n/)) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + (pending.startsWith('\r\n', nl) ? 2 : 1));
          if (line === '') {
            if (ev.id !== null) lastId = ev.id;
            if (ev.data.length) {
              const text = ev.data.join('\n');
              let data = text;
              try {
                data = JSON.parse(text);
              } catch {
                data = text;
              }
              const event = { type: ev.type, id: lastId, data };
              onEvent(event);
              if (until(event)) {
                controller.abort();
                return 'done';
              }
            }
            ev = { type: 'message', data: [], size: 0, id: null };
            continue;
          }
          if (line.startsWith(':')) continue; // a comment (keep-alive)
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') {
            ev.size += val.length;
            if (ev.size > MAX_PENDING) throw new Error('an event larger than the console accepts');
            ev.data.push(val);
          } else if (field === 'event') ev.type = val;
          else if (field === 'id' && !val.includes('\0')) ev.id = val;
          else if (field === 'retry' && /^\d+$/.test(val)) delay = Math.min(MAX_DELAY_MS, Math.max(FIRST_DELAY_MS, Number(val)));
        }
        if (pending.length > MAX_PENDING) throw new Error('a line longer than the console accepts');
      }
    } catch (e) {
      if (!closed) onState(`dropped: ${e.message || e}`);
      return 'error';
    } finally {
      reader.releaseLock?.();
    }
  }

  connect();
  return sub;
}
