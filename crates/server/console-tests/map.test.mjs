// Browser test of the console's 2-D map view, in Debian's Chromium against a real
// `kernelize serve` (tests/it/map.rs made collection `words`: three clusters labelled by
// metadata.pos).
//
//   node map.test.mjs <base-url> <reader-key> <artifact-dir>
//
// Signs in with a reader key of `words`, picks the collection, colours by `pos` with the
// keyboard-driven form, checks the drawn points, the legend, hover and arrow-key details,
// and the table alternative. Screenshots and axe-core on every state shown.

import assert from 'node:assert/strict';
import { artifactDir, checker, failed, launch, logger, openPage, tabTo } from './harness.mjs';

const [base, key, dir] = process.argv.slice(2);
if (!base || !key || !dir) {
  console.error('usage: node map.test.mjs <base-url> <reader-key> <artifact-dir>');
  process.exit(2);
}
const log = logger('map-test');
const check = checker(artifactDir(dir), log);
const problems = [];
const browser = await launch();

const { page } = await openPage(browser, base, problems);
try {
  await page.goto(`${base}/console/`);
  await page.locator('input[name="api-key"]').fill(key);
  await page.keyboard.press('Enter');
  await page.locator('#session-info').waitFor();

  // The picker lists the collection; the nav has the view.
  await page.locator('#nav a', { hasText: 'Map' }).click();
  await page.locator('h1', { hasText: 'Map' }).waitFor();
  await check(page, 'map-picker');
  await page.locator('main a', { hasText: 'words' }).click();
  await page.locator('#map-plot').waitFor();
  assert.equal(await page.locator('#map-plot circle[data-i]').count(), 600, 'all 600 records drawn (sample 1000)');
  assert.match(await page.locator('#map-summary').textContent(), /600 of 600 records/);
  await check(page, 'map-plain');

  // Colour by pos, with the keyboard only.
  await tabTo(page, 'select[name="color-by"]');
  await page.keyboard.press('ArrowDown'); // "(none)" → the first field, "i"
  await page.locator('select[name="color-by"]').selectOption('pos');
  await tabTo(page, 'input[name="sample"]');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('300');
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/map\/words\?color=pos&sample=300$/);
  await page.locator('ul.legend li').first().waitFor();
  await page.waitForFunction(() => document.querySelectorAll('#map-plot circle[data-i]').length === 300);
  const legend = await page.locator('ul.legend').textContent();
  for (const label of ['noun', 'verb', 'adjective']) assert.ok(legend.includes(label), legend);
  const fills = await page.evaluate(() => new Set([...document.querySelectorAll('#map-plot circle[data-i]')].map((c) => c.getAttribute('fill'))).size);
  assert.equal(fills, 3, 'one colour per part of speech');

  // Hover shows a point's id, value and text.
  const dot = page.locator('#map-plot circle[data-i]').nth(5);
  await dot.hover({ force: true });
  const hovered = await page.locator('#map-detail').textContent();
  assert.match(hovered, /(noun|verb|adjective)-\d{4} · pos: (noun|verb|adjective)a \1 number \d+/, hovered);
  await check(page, 'map-coloured-hover');

  // Keyboard: focus the plot and walk the points.
  await tabTo(page, '#map-plot');
  await page.keyboard.press('Home');
  const first = await page.locator('#map-detail strong').textContent();
  await page.keyboard.press('ArrowRight');
  const second = await page.locator('#map-detail strong').textContent();
  assert.notEqual(first, second);
  await page.keyboard.press('End');
  assert.match(await page.locator('#map-detail strong').textContent(), /^(noun|verb|adjective)-\d{4}$/);

  // The table alternative holds every point.
  await tabTo(page, 'details.map-table summary');
  await page.keyboard.press('Enter');
  assert.equal(await page.locator('details.map-table tbody tr').count(), 300);
  await check(page, 'map-table');

  assert.deepEqual(problems, [], 'no CSP refusals or script errors');
  log('passed');
} catch (e) {
  await failed(page, dir, problems, e);
} finally {
  await browser.close();
}
