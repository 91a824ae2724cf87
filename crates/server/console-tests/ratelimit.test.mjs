// Browser test: the console against a server whose per-key rate limit is tiny (1 request/s,
// a burst of a few): moving between views soon gets 429, which the console shows as a
// clear message with the wait the server asked for; after that wait the same view loads
// again and the message is gone. Nothing breaks in between (no script error).
//
//   node ratelimit.test.mjs <base-url> <admin-key> <artifact-dir>

import assert from 'node:assert/strict';
import { artifactDir, checker, launch, logger, openPage } from './harness.mjs';

const [base, adminKey, artifacts] = process.argv.slice(2);
if (!base || !adminKey || !artifacts) {
  console.error('usage: node ratelimit.test.mjs <base-url> <admin-key> <artifact-dir>');
  process.exit(2);
}
artifactDir(artifacts);
const log = logger('ratelimit-test');
const check = checker(artifacts, log);
const browser = await launch();
const problems = [];
const { page } = await openPage(browser, base, problems, /status of 429/);

try {
  await page.goto(`${base}/console/`);
  await page.getByLabel('API key').fill(adminKey);
  await page.keyboard.press('Enter');
  await page.locator('#session-info').waitFor();
  const alert = page.locator('#alert');
  // Views in turn, each a few requests, until one is refused.
  const views = ['#/collections', '#/keys', '#/audit', '#/overview'];
  let refused = '';
  for (let i = 0; i < 40 && !refused; i++) {
    await page.evaluate((h) => {
      location.hash = h;
    }, views[i % views.length]);
    await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
    refused = (await alert.textContent()) || '';
  }
  assert.match(refused, /^Too many requests: rate limit of this key exceeded\. Try again in (\d+) s\.$/, `the refusal is explained: "${refused}"`);
  const wait = Number(refused.match(/in (\d+) s/)[1]);
  assert.ok(wait >= 1 && wait <= 60, `a bounded wait: ${wait}`);
  assert.equal(await alert.getAttribute('role'), 'alert', 'announced to assistive technology');
  await check(page, 'rate-limited');
  // After the wait the view loads again and the message goes.
  await page.waitForTimeout(wait * 1000 + 1500);
  await page.evaluate(() => {
    location.hash = '#/collections';
  });
  await page.getByRole('heading', { name: 'Create a collection' }).waitFor();
  await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
  assert.equal((await alert.textContent()) || '', '', 'the message is cleared once a request succeeds');
  assert.deepEqual(problems, [], 'no CSP refusal or script error');
  log('passed');
} finally {
  await browser.close();
}
