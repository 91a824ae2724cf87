// Browser test of the web console: playwright-core drives Debian's Chromium
// (/usr/bin/chromium, or $KZ_CHROMIUM; never a downloaded browser) against a real
// `kernelize serve` on 127.0.0.1, with the console's own CSP in force.
//
//   node console.test.mjs <base-url> <admin-key> <artifact-dir>
//
// Signs in, creates a collection in the UI and records through the API, browses and
// filters them, searches with the exact-search recall, creates and revokes a key, finds the
// audit entry, draws usage; then a reader key sees no write controls, and a forged token is
// refused. Screenshots of every view go to <artifact-dir>; axe-core runs over every view
// (zero serious or critical violations). Exits non-zero on the first failure.

import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { artifactDir, checker, failed, launch, openPage } from './harness.mjs';

const [base, adminKey, artifacts] = process.argv.slice(2);
if (!base || !adminKey || !artifacts) {
  console.error('usage: node console.test.mjs <base-url> <admin-key> <artifact-dir>');
  process.exit(2);
}
artifactDir(artifacts);
// Only this run's downloads in the directory.
for (const f of readdirSync(artifacts)) if (f.endsWith('.kernel')) rmSync(join(artifacts, f));

const log = (msg) => console.error(`[console-test] ${msg}`);

async function call(method, path, body, key = adminKey) {
  const r = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// A small seeded generator: the same records every run.
function rng(seed) {
  let x = seed >>> 0;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const browser = await launch();
const problems = [];
// Refused by the CSP, or a script that failed: the console must run clean under its policy.
const { page } = await openPage(browser, base, problems, /status of 40[13]|status of 429/);
page.on('dialog', (d) => d.accept());

const shared = checker(artifacts, log);
let shots = 0;
/** Screenshot and axe-core over the current view. */
async function check(name) {
  shots += 1;
  await shared(page, name);
}

async function goto(hash) {
  await page.evaluate((h) => {
    location.hash = h;
  }, hash);
  await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
}

async function signIn(key) {
  const input = page.getByLabel('API key');
  await input.waitFor();
  await input.focus();
  // The keyboard only: type the key and press Enter.
  await page.keyboard.type(key);
  await page.keyboard.press('Enter');
  await page.locator('#session-info').waitFor();
}

try {
  // ---------------------------------------------------------------- sign in (admin)
  await page.goto(`${base}/console/`);
  await check('sign-in');
  assert.equal(
    await page.evaluate(() => document.querySelector('a[href], button, input, select, textarea').className),
    'skip',
    'the skip link comes first in the tab order',
  );
  assert.equal(await page.evaluate(() => document.activeElement.name), 'api-key', 'the key field has the focus');
  await signIn(adminKey);
  assert.match(await page.locator('#session-info').textContent(), /admin · all collections/);
  const stored = await page.evaluate(() => JSON.stringify({ ...sessionStorage }) + JSON.stringify({ ...localStorage }));
  assert.ok(!stored.includes(adminKey), 'the API key is not stored in the browser');
  const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('kernelize.session')).token);
  assert.equal(token.split('.').length, 3, 'the token (a JWT) is in sessionStorage');
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.getByText('Requests served').waitFor();
  await page.waitForFunction(() => /^\d+\.\d\d\/s over \d/.test(document.querySelector('#request-rate').textContent));
  await check('overview');

  // ---------------------------------------------------------------- a collection, made in the UI
  await page.getByRole('link', { name: 'Collections' }).click();
  await page.getByRole('heading', { name: 'Create a collection' }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill('docs');
  await page.getByLabel('Dimension').fill('4');
  await page.getByRole('button', { name: 'Create collection' }).click();
  await page.getByRole('heading', { name: 'Collection docs' }).waitFor();
  await check('collection');

  // ---------------------------------------------------------------- records through the API
  const rand = rng(7);
  const records = Array.from({ length: 60 }, (_, i) => ({
    id: `r${String(i).padStart(3, '0')}`,
    vector: [rand() - 0.5, rand() - 0.5, rand() - 0.5, rand() - 0.5],
    text: `record number ${i} about ${i % 3 === 0 ? 'cats' : 'dogs'}`,
    metadata: { pos: i % 3 === 0 ? 'n' : 'v', year: 1950 + i },
  }));
  await call('POST', '/v1/collections/docs/records', { records });
  const nouns = records.filter((r) => r.metadata.pos === 'n');

  // ---------------------------------------------------------------- browse and filter
  await goto('#/records/docs');
  await page.locator('#page-info').waitFor();
  assert.match(await page.locator('#page-info').textContent(), /Page 1: 60 records; last page/);
  await page.getByRole('button', { name: 'Add condition' }).click();
  await page.getByLabel('Field', { exact: true }).fill('pos');
  await page.getByLabel('Value', { exact: true }).fill('n');
  assert.equal(await page.getByLabel('Filter expression').inputValue(), 'pos = "n"');
  await page.getByRole('button', { name: 'Apply filter' }).click();
  await page.waitForFunction(() => /matching the filter/.test(document.querySelector('#page-info').textContent));
  assert.match(await page.locator('#page-info').textContent(), new RegExp(`Page 1: ${nouns.length} records matching the filter; last page`));
  const metas = await page.locator('table tbody tr td:nth-child(3)').allTextContents();
  assert.equal(metas.length, nouns.length);
  assert.ok(metas.every((m) => m.includes('"pos":"n"')), `only nouns: ${metas}`);
  // Typed by hand, applied with Enter; then paged 5 at a time through the cursor.
  const expr = page.getByLabel('Filter expression');
  await expr.fill('pos = "n" and year >= 1980');
  await expr.press('Enter');
  const later = nouns.filter((r) => r.metadata.year >= 1980).length;
  await page.waitForFunction((n) => document.querySelector('#page-info').textContent.includes(`Page 1: ${n} records`), later);
  await page.getByRole('button', { name: 'Clear' }).click();
  await page.waitForFunction(() => /Page 1: 60 records; last page/.test(document.querySelector('#page-info').textContent));
  await page.getByLabel('Records per page').selectOption('25');
  await page.waitForFunction(() => /Page 1: 25 records; more follow/.test(document.querySelector('#page-info').textContent));
  await page.getByRole('button', { name: 'Next page' }).click();
  await page.waitForFunction(() => /Page 2: 25 records; more follow/.test(document.querySelector('#page-info').textContent));
  await page.getByRole('button', { name: 'Next page' }).click();
  await page.waitForFunction(() => /Page 3: 10 records; last page/.test(document.querySelector('#page-info').textContent));
  assert.ok(await page.getByRole('button', { name: 'Next page' }).isDisabled());
  const shown = await page.getByRole('button', { name: /^Show record / }).first().textContent();
  await page.getByRole('button', { name: /^Show record / }).first().click();
  await page.getByRole('heading', { name: `Record ${shown}` }).waitFor();
  await page.locator('#record-title').waitFor();
  await check('records');

  // A filter whose few matches lie past the server's 10,000-records-per-request bound: the
  // browser follows the cursor until the page is full or the collection ends.
  await call('POST', '/v1/collections', { name: 'many', dim: 2 });
  for (let b = 0; b < 3; b++) {
    const batch = Array.from({ length: 8000 }, (_, i) => {
      const n = b * 8000 + i;
      return { id: `m${n}`, vector: [1, n % 7], metadata: { rare: n % 4000 === 3999 } };
    });
    await call('POST', '/v1/collections/many/records', { records: batch });
  }
  await goto('#/records/many');
  await page.locator('#page-info').waitFor();
  await page.getByLabel('Filter expression').fill('rare = true');
  await page.getByLabel('Filter expression').press('Enter');
  await page.waitForFunction(() => /matching the filter/.test(document.querySelector('#page-info').textContent));
  assert.match(await page.locator('#page-info').textContent(), /^Page 1: 6 records matching the filter; last page \(.*, 3 requests\)\.$/);

  // ---------------------------------------------------------------- search with the exact comparison
  await goto('#/search/docs');
  await page.getByLabel('Vector', { exact: true }).check();
  await page.getByLabel('Query vector (JSON array)').fill('[0.1, -0.2, 0.3, 0.05]');
  await page.getByLabel('k (results)').fill('5');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.locator('#recall').waitFor();
  const recallText = await page.locator('#recall').textContent();
  const m = /Recall@5 against exact search: (\d\.\d{3}) \((\d) of 5\)/.exec(recallText);
  assert.ok(m, `recall shown: ${recallText}`);
  assert.ok(Number(m[1]) >= 0.8, `recall of a 60-record graph: ${recallText}`);
  assert.match(await page.locator('#latency').textContent(), /Engine [\d.]+ ms, round trip [\d.]+ ms/);
  const exact = await call('POST', '/v1/collections/docs/search', { vector: [0.1, -0.2, 0.3, 0.05], k: 5, exact: true });
  const shownExact = await page.locator('table').nth(1).locator('tbody tr td:nth-child(2)').allTextContents();
  assert.deepEqual(shownExact, exact.hits.map((x) => x.id), 'the exact table is the exact answer');
  // A filtered keyword search from the same form.
  await page.getByLabel('Text', { exact: true }).check();
  await page.getByLabel('Query text').fill('cats');
  await page.getByLabel('Mode', { exact: true }).selectOption('keyword');
  await page.getByLabel('Filter expression').fill('year < 1960');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.waitForFunction(() => /^\d+ hits?$/.test(document.querySelector('#results-title')?.textContent || '') && !document.querySelector('#recall'));
  const kwIds = await page.locator('table').first().locator('tbody tr td:nth-child(2)').allTextContents();
  const wantKw = records.filter((r) => r.text.includes('cats') && r.metadata.year < 1960).map((r) => r.id).sort();
  assert.deepEqual([...kwIds].sort(), wantKw, 'keyword hits honour the filter');
  await check('search');

  // ---------------------------------------------------------------- a kernel: build, progress, report
  await page.getByRole('link', { name: 'Kernels' }).click();
  await page.getByRole('heading', { name: 'Build a kernel' }).waitFor();
  await page.getByLabel('Collection', { exact: true }).selectOption('docs');
  await page.getByRole('button', { name: 'Build kernel' }).click();
  await page.locator('#kernel-state').waitFor();
  await page.locator('#kernel-recall').waitFor({ timeout: 120000 });
  assert.match(await page.locator('#kernel-recall').textContent(), /^Recall@\d+ against exact search over the original records: \d\.\d{3}/);
  assert.ok((await page.locator('#recall-curve svg rect.bar').count()) >= 1, 'the recall curve is drawn');
  assert.match(await page.locator('#kernel-state').textContent(), /succeeded/);
  await page.getByText(/^ivf \(nlist \d+, nprobe \d+\)$/).waitFor();
  const [dl] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download kernel' }).click()]);
  const kernelFile = join(artifacts, 'docs.kernel');
  await dl.saveAs(kernelFile);
  const kernelId = (await page.locator('h1').textContent()).replace('Kernel ', '');
  const info = await call('GET', `/v1/kernels/${kernelId}`);
  assert.equal(readFileSync(kernelFile).length, info.bytes, 'the whole signed file');
  await check('kernel');
  await goto('#/kernels');
  await page.getByRole('link', { name: kernelId }).waitFor();

  // ---------------------------------------------------------------- keys: create, revoke
  await page.getByRole('link', { name: 'Keys' }).click();
  await page.getByRole('heading', { name: 'API keys' }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill('console-reader');
  await page.getByLabel('Role', { exact: true }).selectOption('reader');
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.getByRole('heading', { name: 'Key console-reader created' }).waitFor();
  const readerKey = await page.getByLabel('Secret (shown only now)').inputValue();
  assert.match(readerKey, /^kz_[a-z0-9]{12}_/);
  await check('keys-secret');
  await page.getByRole('button', { name: 'Done, hide it' }).click();
  await page.getByLabel('Name', { exact: true }).fill('doomed');
  await page.getByLabel('Role', { exact: true }).selectOption('writer');
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.getByRole('heading', { name: 'Key doomed created' }).waitFor();
  const doomedId = /^kz_([a-z0-9]{12})_/.exec(await page.getByLabel('Secret (shown only now)').inputValue())[1];
  await page.getByRole('button', { name: `Rotate key doomed ${doomedId}` }).click();
  await page.getByRole('heading', { name: 'New secret for doomed' }).waitFor();
  const rotated = await page.getByLabel('Secret (shown only now)').inputValue();
  assert.ok(rotated.startsWith('kz_') && !rotated.includes(doomedId), 'a new key replaces it');
  await page.getByRole('button', { name: `Revoke key doomed ${doomedId}` }).click();
  await page.waitForFunction((id) => [...document.querySelectorAll('tr')].some((tr) => tr.textContent.includes(id) && tr.textContent.includes('revoked')), doomedId);
  const keys = await call('GET', '/v1/keys');
  assert.ok(keys.keys.find((k) => k.id === doomedId).revoked_at, 'revoked on the server');
  // Mint a token from the reader key (keys mint tokens, tokens do not).
  await page.getByLabel('API key to mint from').fill(readerKey);
  await page.getByLabel('Lifetime (seconds)').fill('120');
  await page.getByRole('button', { name: 'Mint token' }).click();
  await page.getByRole('heading', { name: 'Token minted' }).waitFor();
  assert.equal((await page.getByLabel('Secret (shown only now)').inputValue()).split('.').length, 3);
  await check('keys');

  // ---------------------------------------------------------------- audit: the revocation is there
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.locator('#chain-status').waitFor();
  assert.match(await page.locator('#chain-status').textContent(), /^Chain verified: \d+ entries intact\.$/);
  await page.waitForFunction((id) => [...document.querySelectorAll('tr')].some((tr) => tr.textContent.includes('keys.revoke') && tr.textContent.includes(id)), doomedId);
  await page.getByLabel('Action', { exact: true }).fill('keys.create');
  await page.getByRole('button', { name: 'Show entries' }).click();
  await page.waitForFunction(() => /\(filtered\)/.test(document.querySelector('#audit-info').textContent));
  const actions = await page.locator('table tbody tr td:nth-child(4)').allTextContents();
  assert.ok(actions.length >= 2 && actions.every((a) => a === 'keys.create'), `filtered: ${actions}`);
  await check('audit');

  // ---------------------------------------------------------------- usage chart
  await page.getByRole('link', { name: 'Usage' }).click();
  await page.locator('#usage-chart svg rect.bar').first().waitFor();
  assert.ok((await page.locator('#usage-chart svg rect.bar').count()) >= 1);
  await check('usage');

  // ---------------------------------------------------------------- a reader sees no write controls
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API key').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('kernelize.session')), null, 'signing out forgets the token');
  await signIn(readerKey);
  assert.match(await page.locator('#session-info').textContent(), /reader · all collections/);
  const nav = await page.locator('#nav a').allTextContents();
  assert.deepEqual(nav, ['Overview', 'Collections', 'Records', 'Search', 'Map', 'Kernels', 'Programs', 'Chat', 'Fleet'], 'no admin views for a reader');
  await goto('#/collections');
  await page.getByRole('heading', { name: 'Collections' }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Create collection' }).count(), 0);
  await goto('#/collections/docs');
  await page.getByRole('heading', { name: 'Collection docs' }).waitFor();
  assert.equal(await page.getByRole('button', { name: /^Drop/ }).count(), 0);
  await goto('#/records/docs');
  await page.locator('#page-info').waitFor();
  assert.equal(await page.getByRole('button', { name: /^Delete/ }).count(), 0);
  assert.equal(await page.getByRole('heading', { name: 'Upsert a record' }).count(), 0);
  await check('reader-records');
  await goto('#/kernels');
  await page.getByRole('heading', { name: 'Kernels' }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Build kernel' }).count(), 0, 'a reader cannot build kernels');
  await goto('#/keys');
  assert.match(await page.locator('#alert').textContent(), /needs an admin key/);

  // ---------------------------------------------------------------- a forged token is refused
  await page.evaluate(() => {
    const s = JSON.parse(sessionStorage.getItem('kernelize.session'));
    const [head, body, sig] = s.token.split('.');
    const claims = JSON.parse(atob(body.replace(/-/g, '+').replace(/_/g, '/')));
    claims.role = 'admin';
    const forged = btoa(JSON.stringify(claims)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    sessionStorage.setItem('kernelize.session', JSON.stringify({ ...s, role: 'admin', token: `${head}.${forged}.${sig}` }));
  });
  await page.reload(); // on #/keys, with the forged session
  await page.locator('#signin-reason').waitFor();
  const reason = await page.locator('#signin-reason').textContent();
  assert.match(reason, /refused the credentials/, reason);
  assert.match(await page.locator('#alert').textContent(), /refused the credentials/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('kernelize.session')), null, 'the forged session is dropped');
  await check('forged-token');

  const csp = problems.filter((p) => p.startsWith('CSP'));
  assert.deepEqual(csp, [], 'nothing refused by the CSP');
  assert.deepEqual(problems, [], 'no script errors');
  log(`passed; ${shots} screenshots in ${artifacts}`);
} catch (e) {
  await failed(page, artifacts, problems, e);
} finally {
  await browser.close();
}
