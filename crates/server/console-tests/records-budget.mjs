// The record browser's responsiveness on a large collection (issue 17's budget: "the record
// browser stays responsive on a 117k-record collection"), measured in Debian's Chromium
// against a running server: the time from an action (open the view, next page, another
// page size, apply a filter) to its page drawn, and every long task (main thread busy
// > 50 ms, PerformanceObserver `longtask`) over the whole session, with the longest.
//
//   node crates/server/console-tests/records-budget.mjs <base-url> <admin-key> <collection> [pages=10]
//
// Prints one JSON line per measured action and one summary line.

import { launch } from './harness.mjs';

const [base, adminKey, collection, pagesArg] = process.argv.slice(2);
if (!base || !adminKey || !collection) {
  console.error('usage: node records-budget.mjs <base-url> <admin-key> <collection> [pages]');
  process.exit(2);
}
const pages = Number(pagesArg || 10);
const browser = await launch();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const page = await (await browser.newContext()).newPage();
await page.addInitScript(() => {
  window.__long = [];
  new PerformanceObserver((l) => {
    for (const e of l.getEntries()) window.__long.push(e.duration);
  }).observe({ type: 'longtask', buffered: true });
});
await page.goto(`${base}/console/`);
await page.getByLabel('API key').fill(adminKey);
await page.keyboard.press('Enter');
await page.locator('#session-info').waitFor();

const info = () => page.evaluate(() => document.querySelector('#page-info')?.textContent ?? '');
/** Runs `act`, then waits until the page line changes and nothing is busy; returns ms and rows. */
async function timed(label, act) {
  const before = await info();
  const t = await page.evaluate(() => performance.now());
  await act();
  await page.waitForFunction(
    (b) => {
      const p = document.querySelector('#page-info');
      return p && p.textContent !== b && !document.querySelector('[aria-busy="true"]');
    },
    before,
    { timeout: 60_000 },
  );
  // The page is drawn once the browser has painted the frame after the change.
  const ms = await page.evaluate((t0) => new Promise((r) => requestAnimationFrame(() => r(performance.now() - t0))), t);
  const rows = await page.locator('table tbody tr').count();
  const row = { action: label, ms: Math.round(ms * 10) / 10, rows, page_info: await info() };
  console.log(JSON.stringify(row));
  return row;
}

const results = [];
results.push(await timed('open the view (100 per page)', () => page.evaluate((c) => { location.hash = `#/records/${encodeURIComponent(c)}`; }, collection)));
const next = [];
for (let i = 0; i < pages; i++) next.push((await timed('next page (100)', () => page.getByRole('button', { name: 'Next page' }).click())).ms);
results.push(await timed('500 per page', () => page.getByLabel('Records per page').selectOption('500')));
const next500 = [];
for (let i = 0; i < Math.max(1, Math.floor(pages / 2)); i++) next500.push((await timed('next page (500)', () => page.getByRole('button', { name: 'Next page' }).click())).ms);
await timed('100 per page', () => page.getByLabel('Records per page').selectOption('100'));
const expr = page.getByLabel('Filter expression');
for (const f of ['pos = "v"', 'lexname = "noun.animal"', 'lexname = "noun.motive"', 'pos = "none-such"']) {
  results.push(await timed(`filter ${f}`, async () => {
    await expr.fill(f);
    await expr.press('Enter');
  }));
}
const long = await page.evaluate(() => window.__long);
console.log(JSON.stringify({
  summary: {
    open_ms: results[0].ms,
    next_page_100_median_ms: median(next),
    next_page_100_max_ms: Math.max(...next),
    next_page_500_median_ms: median(next500),
    filters: results.slice(2).map((r) => [r.action, r.ms, r.rows]),
    long_tasks: long.length,
    longest_task_ms: long.length ? Math.max(...long) : 0,
  },
}));
await browser.close();
