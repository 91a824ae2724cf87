// The web console's budgets (issue 17), measured in Debian's Chromium against a running
// server: bytes transferred for the first view (every response the page loads before the
// sign-in form is usable; the server sends them uncompressed, so their gzip -9 size is
// given as well) and the time until that form is interactive, from the Performance API
// (navigation start to DOMContentLoaded, by which the module scripts have run and drawn
// the form), then the time from submitting the key to the overview drawn. Each of `runs`
// loads uses a fresh browser context (cold cache).
//
//   node crates/server/console-tests/budget.mjs <base-url> <admin-key> [runs=5]
//
// Prints one JSON line per run and one with the medians.

import { chromium } from 'playwright-core';
import { gzipSync } from 'node:zlib';

const [base, adminKey, runsArg] = process.argv.slice(2);
if (!base || !adminKey) {
  console.error('usage: node budget.mjs <base-url> <admin-key> [runs]');
  process.exit(2);
}
const runs = Number(runsArg || 5);
const browser = await chromium.launch({
  executablePath: process.env.KZ_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];
for (let i = 0; i < runs; i++) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const bodies = [];
  page.on('response', async (r) => {
    try {
      bodies.push(await r.body());
    } catch {
      // a redirect or 304 has no body
    }
  });
  await page.goto(`${base}/console`, { waitUntil: 'load' });
  await page.waitForSelector('input[name="api-key"]:focus');
  const nav = await page.evaluate(() => {
    const n = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    return {
      dom_interactive_ms: n.domInteractive,
      dcl_ms: n.domContentLoadedEventEnd,
      load_ms: n.loadEventEnd,
      transfer_bytes: n.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
      files: 1 + res.length,
    };
  });
  const raw = bodies.reduce((s, b) => s + b.length, 0);
  const gz = bodies.reduce((s, b) => s + gzipSync(b, { level: 9 }).length, 0);
  const t = Date.now();
  await page.fill('input[name="api-key"]', adminKey);
  await page.press('input[name="api-key"]', 'Enter');
  await page.waitForSelector('main h1:text("Overview")');
  await page.waitForSelector('main [aria-busy="true"]', { state: 'detached' });
  const row = { run: i + 1, ...nav, body_bytes: raw, body_bytes_gzip9: gz, sign_in_to_overview_ms: Date.now() - t };
  console.log(JSON.stringify(row));
  rows.push(row);
  await context.close();
}
await browser.close();
const keys = ['dom_interactive_ms', 'dcl_ms', 'load_ms', 'transfer_bytes', 'body_bytes', 'body_bytes_gzip9', 'sign_in_to_overview_ms'];
console.log(JSON.stringify({ median: Object.fromEntries(keys.map((k) => [k, median(rows.map((r) => r[k]))])), runs }));
