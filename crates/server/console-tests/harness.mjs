// What the browser tests (console, fleet, sso, map) share: Debian's Chromium through playwright-core
// (/usr/bin/chromium or $KZ_CHROMIUM; never a downloaded browser), pages that record CSP
// refusals and script errors, and `check`: a screenshot plus axe-core (zero serious or
// critical violations).

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** A log line on standard error, tagged with the test's name. */
export function logger(tag) {
  return (msg) => console.error(`[${tag}] ${msg}`);
}

/** Empties `dir` of an earlier run's screenshots. */
export function artifactDir(dir) {
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(dir)) if (f.endsWith('.png')) rmSync(join(dir, f));
  return dir;
}

/** Starts Chromium. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.KZ_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/**
 * A fresh context and page; `problems` collects CSP refusals and script errors on our
 * own origin (`origin`), except failed requests whose status `expected` matches (answers
 * the test provokes); requests leaving this machine are aborted.
 */
export async function openPage(browser, origin, problems, expected = /status of 40[0134]|status of 429/) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.route(/^https?:\/\/(?!127\.0\.0\.1|localhost)/, (route) => route.abort());
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (!page.url().startsWith(origin)) return;
    const t = m.text();
    if (/Content Security Policy|Refused to/i.test(t)) problems.push(`CSP: ${t}`);
    else if (m.type() === 'error' && !expected.test(t)) problems.push(`console error: ${t}`);
  });
  return { context, page };
}

/** `check(page, name)`: a numbered screenshot in `dir`, then axe-core over the page. */
export function checker(dir, log) {
  let shots = 0;
  return async function check(page, name) {
    await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
    shots += 1;
    await page.screenshot({ path: join(dir, `${String(shots).padStart(2, '0')}-${name}.png`), fullPage: true });
    if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource);
    const result = await page.evaluate(async () => {
      const r = await window.axe.run(document, { resultTypes: ['violations'] });
      return {
        passes: r.passes.length,
        violations: r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) })),
      };
    });
    assert.ok(result.passes >= 10, `${name}: axe checked the page (${result.passes} rules passed)`);
    const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    assert.deepEqual(bad, [], `${name}: serious or critical accessibility violations: ${JSON.stringify(bad, null, 1)}`);
    log(`${name}: ok (axe: ${result.passes} rules passed, ${result.violations.length} minor findings${result.violations.length ? `: ${result.violations.map((v) => v.id).join(', ')}` : ''})`);
  };
}

/**
 * A browser test's failure: a screenshot of `page` as `<dir>/failure.png` (when given),
 * the alert line, the error and the browser's problems on standard error, exit code 1.
 */
export async function failed(page, dir, problems, e) {
  if (page && dir) await page.screenshot({ path: join(dir, 'failure.png'), fullPage: true }).catch(() => {});
  if (page) console.error(`alert: ${await page.locator('#alert').textContent().catch(() => '?')}`);
  console.error(e);
  if (problems.length) console.error(`browser problems:\n${problems.join('\n')}`);
  process.exitCode = 1;
}

/** Presses Tab until `selector` has focus (at most `max` times); fails otherwise. */
export async function tabTo(page, selector, max = 40) {
  for (let i = 0; i < max; i += 1) {
    if (await page.evaluate((sel) => document.activeElement && document.activeElement.matches(sel), selector)) return;
    await page.keyboard.press('Tab');
  }
  assert.fail(`${selector} could not be reached with the Tab key`);
}
