// Overview: liveness, readiness and version (public routes), the collections this key
// sees, and for admins the request rate and latency from /metrics.

import { api, can, publicGet, ApiError } from '../api.js';
import { button, fmt, h, stats, table } from '../dom.js';
import * as prom from '../metrics.js';
import { collectionsTable } from './collections.js';

let lastScrape = null; // {at, total}: the previous scrape, for the request rate
let version = null;

async function readiness() {
  // 503 still carries the checks.
  const resp = await fetch('/readyz', { cache: 'no-store', credentials: 'omit' });
  return { ok: resp.ok, body: await resp.json() };
}

async function scrape() {
  const text = await api('GET', '/metrics', undefined, { accept: 'text' });
  return { at: performance.now(), samples: prom.parse(text) };
}

function requestTotal(samples) {
  return prom.sum(samples, 'kernelize_http_requests_total');
}

export async function render(root, { rerender }) {
  const [health, ready, list] = await Promise.all([publicGet('/healthz'), readiness(), api('GET', '/v1/collections')]);
  if (!version) {
    const doc = await publicGet('/openapi.json');
    version = doc.info && doc.info.version;
  }
  const cols = list.collections;
  const parts = [
    h('h1', null, 'Overview'),
    stats(
      [
        ['Server', health.status === 'ok' ? 'alive' : health.status],
        ['Ready', ready.ok ? 'ready' : 'not ready'],
        ['Version', version || '—'],
        ['Collections', fmt.num(cols.length)],
        ['Records', fmt.num(cols.reduce((a, c) => a + c.records, 0))],
        ['Segment bytes', fmt.bytes(cols.reduce((a, c) => a + c.segment_bytes, 0))],
      ],
      'Server status',
    ),
    table(
      'Readiness checks (GET /readyz)',
      [
        { title: 'Check', cell: ([k]) => k },
        { title: 'State', cell: ([, v]) => h('span', { class: v === 'ok' ? 'good' : 'bad' }, v) },
      ],
      Object.entries(ready.body.checks || {}),
    ),
    h('h2', null, 'Collections'),
    collectionsTable(cols, false),
  ];
  if (can.admin()) {
    parts.push(h('h2', null, 'Requests'));
    let now;
    try {
      now = await scrape();
    } catch (e) {
      if (!(e instanceof ApiError) || e.status === 401) throw e;
      parts.push(h('p', null, `Metrics are not available: ${e.message}`));
      now = null;
    }
    if (now) {
      const total = requestTotal(now.samples);
      let rate = null;
      let over = null;
      if (lastScrape) {
        over = (now.at - lastScrape.at) / 1000;
        rate = over > 0 ? (total - lastScrape.total) / over : null;
      }
      lastScrape = { at: now.at, total };
      const rateCell = h('span', { id: 'request-rate' }, rate === null ? 'measuring…' : `${rate.toFixed(2)}/s over ${over.toFixed(1)} s`);
      if (rate === null) {
        // A rate needs two scrapes: take the second one shortly (once, not a polling loop).
        setTimeout(async () => {
          if (!rateCell.isConnected) return;
          try {
            const later = await scrape();
            const secs = (later.at - lastScrape.at) / 1000;
            const t = requestTotal(later.samples);
            rateCell.textContent = `${((t - lastScrape.total) / secs).toFixed(2)}/s over ${secs.toFixed(1)} s`;
            lastScrape = { at: later.at, total: t };
          } catch {
            rateCell.textContent = 'refresh to measure';
          }
        }, 2000);
      }
      const errors = prom.sum(now.samples, 'kernelize_http_requests_total', (l) => Number(l.status) >= 500);
      const latency = (q) => {
        const secs = prom.quantile(now.samples, 'kernelize_http_request_duration_seconds', q);
        return secs === null ? null : secs * 1000;
      };
      parts.push(
        stats(
          [
            ['Requests served', fmt.num(total)],
            ['Request rate', rateCell],
            ['5xx answers', fmt.num(errors)],
            ['Latency p50', fmt.ms(latency(0.5))],
            ['Latency p99', fmt.ms(latency(0.99))],
            ['In flight', fmt.num(prom.sum(now.samples, 'kernelize_http_requests_in_flight'))],
          ],
          'Request metrics',
        ),
        h('p', { class: 'muted' }, 'From GET /metrics since the server started; the rate between two scrapes a moment apart (or two loads of this page), latency quantiles are estimated from the histogram buckets.'),
        h('div', { class: 'actions' }, button('Refresh', () => rerender(), { class: 'secondary' })),
        table(
          'Busiest routes',
          [
            { title: 'Route', cell: (r) => h('code', null, r.route) },
            { title: 'Requests', num: true, cell: (r) => fmt.num(r.count) },
            { title: 'Mean latency', num: true, cell: (r) => fmt.ms(r.mean === null ? null : r.mean * 1000) },
          ],
          prom.routes(now.samples).slice(0, 12),
        ),
      );
    }
  }
  root.replaceChildren(...parts);
}
