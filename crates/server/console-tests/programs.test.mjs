// Browser test of the console's programs, compile, chat and kernel verify/query pages, in
// Debian's Chromium against a real `kernelize serve` on the real local model
// (tests/it/console_programs.rs made collection `facts` — f1 "The capital of France is
// Paris.", … — and its kernel).
//
//   node programs.test.mjs <base-url> <writer-key> <reader-key> <kernel-id> <artifact-dir>
//
// As a writer, with the keyboard: registers a program from JSON, tries it (outputs, the
// call's backend and tokens, the run listed), compiles it with a tiny budget and watches
// the score chart get its points over server-sent events, creates the chat program and
// asks a question grounded in the kernel (a citation of a retrieved id), verifies the
// kernel in the browser (and sees altered copies refused) and queries it. Then a reader
// sees no write controls. Screenshots and axe-core (zero serious or critical) on each view.

import assert from 'node:assert/strict';
import { artifactDir, checker, failed, launch, logger, openPage, tabTo } from './harness.mjs';

const [base, writerKey, readerKey, kernelId, dir] = process.argv.slice(2);
if (!base || !writerKey || !readerKey || !kernelId || !dir) {
  console.error('usage: node programs.test.mjs <base-url> <writer-key> <reader-key> <kernel-id> <artifact-dir>');
  process.exit(2);
}
const log = logger('programs-test');
const check = checker(artifactDir(dir), log);
const problems = [];
const browser = await launch();
const t0 = Date.now();
const lap = (what) => log(`${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s`);

const EXAMPLES = [
  { inputs: { question: 'Is fire hot?' }, outputs: { answer: 'yes' } },
  { inputs: { question: 'Is snow black?' }, outputs: { answer: 'no' } },
];

async function signIn(page, key) {
  await page.goto(`${base}/console/`);
  await page.locator('input[name="api-key"]').fill(key);
  await page.keyboard.press('Enter');
  await page.locator('#session-info').waitFor();
}

async function goto(page, hash) {
  await page.evaluate((x) => {
    location.hash = x;
  }, hash);
  await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
}

const { page } = await openPage(browser, base, problems);
page.on('dialog', (d) => d.accept());
try {
  await signIn(page, writerKey);

  // ---------------------------------------------------------------- register (keyboard only)
  await page.locator('#nav a', { hasText: 'Programs' }).click();
  await page.getByRole('heading', { name: 'Register a program' }).waitFor();
  await check(page, 'programs');
  await tabTo(page, 'input[name="program-name"]');
  await page.keyboard.type('qa');
  await page.keyboard.press('Tab');
  await page.keyboard.type('yes or no');
  // The program JSON is prefilled with a yes/no predictor; submit from the button.
  await tabTo(page, '#main form button[type="submit"]');
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/programs\/qa$/);
  await page.getByRole('heading', { name: 'Program qa' }).waitFor();
  assert.match(await page.locator('section.module').first().textContent(), /Predict judge.*Answer the question with yes or no\..*question: string.*answer: one of yes, no/s);
  await check(page, 'program');
  lap('registered');

  // ---------------------------------------------------------------- try it
  await tabTo(page, 'textarea[name="input-question"]');
  await page.keyboard.type('Is fire hot?');
  await tabTo(page, '#try-form button[type="submit"]');
  await page.keyboard.press('Enter');
  await page.locator('#try-outputs').waitFor({ timeout: 60000 });
  const answer = await page.locator('#try-outputs dd').first().textContent();
  assert.ok(['yes', 'no'].includes(answer), `a label: ${answer}`);
  assert.match(await page.locator('#try-summary').textContent(), /^Run \w+ of version 1: [\d.]+ ms, \d+ tokens in, \d+ out, 1 call\.$/);
  const call = await page.locator('#try-result table tbody tr').first().textContent();
  assert.match(call, /judge.*local:.*smollm2/i, call);
  await page.waitForFunction(() => document.querySelectorAll('#program-runs tbody tr').length === 1 && /ok/.test(document.querySelector('#program-runs tbody tr').textContent));
  await check(page, 'program-try');
  lap('tried');

  // ---------------------------------------------------------------- compile, live
  await tabTo(page, 'textarea[name="train"]');
  await page.keyboard.insertText(EXAMPLES.map((e) => JSON.stringify(e)).join('\n'));
  await tabTo(page, 'input[name="budget-calls"]');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('30');
  await tabTo(page, '#compile-form button[type="submit"]');
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/programs\/qa\/compile\/\w+$/);
  await page.locator('#job-state').waitFor();
  await page.waitForFunction(() => /succeeded|failed|cancelled/.test(document.querySelector('#job-state').textContent), null, { timeout: 90000 });
  assert.match(await page.locator('#job-state').textContent(), /succeeded/);
  const points = await page.locator('#score-chart circle.point').count();
  assert.ok(points >= 2, `the baseline and a candidate are points of the chart (${points})`);
  const scores = await page.$$eval('#score-chart circle.point title', (ts) => ts.map((t) => t.textContent));
  for (const s of scores) assert.match(s, /^Trial \d+ \((baseline|candidate), step \d+\): score [01]\.\d{3}, best so far [01]\.\d{3}, \d+ calls$/, s);
  await tabTo(page, 'details.score-table summary');
  await page.keyboard.press('Enter');
  assert.equal(await page.locator('details.score-table tbody tr').count(), points, 'the table alternative has every point');
  assert.match(await page.locator('#job-body').textContent(), /Resultversion 2/);
  await check(page, 'compile-job');
  lap('compiled');

  // ---------------------------------------------------------------- chat grounded in the kernel
  await page.locator('#nav a', { hasText: 'Chat' }).click();
  await page.getByRole('button', { name: 'Create the chat program' }).waitFor();
  await tabTo(page, '#chat-no-program button');
  await page.keyboard.press('Enter');
  await page.locator('#chat-form').waitFor();
  assert.match(await page.locator('select[name="chat-kernel"]').textContent(), new RegExp(`facts · ${kernelId}`));
  await tabTo(page, 'textarea[name="question"]');
  await page.keyboard.type('What is the capital of France?');
  await page.keyboard.press('Enter');
  await page.locator('#chat-log li.turn .answer').waitFor({ timeout: 60000 });
  const cites = await page.$$eval('#chat-log button.citation', (bs) => bs.map((b) => b.dataset.id));
  assert.ok(cites.length >= 1, `the answer cites a passage: ${await page.locator('#chat-log').textContent()}`);
  for (const id of cites) assert.ok(['f1', 'f2', 'f3', 'f4'].includes(id), id);
  // A citation shows its passage.
  await tabTo(page, '#chat-log button.citation');
  await page.keyboard.press('Enter');
  const shown = await page.evaluate(() => document.activeElement.textContent);
  assert.ok(shown.startsWith(cites[0]), shown);
  assert.match(await page.locator('#chat-log .meta').textContent(), /local:.*\d+ tokens in, \d+ out/);
  await check(page, 'chat');
  lap('chatted');

  // ---------------------------------------------------------------- kernel: verify and query
  await goto(page, `#/kernels/${kernelId}`);
  await page.getByRole('heading', { name: 'Verify' }).waitFor();
  await tabTo(page, '#kernel-verify-run', 60);
  await page.keyboard.press('Enter');
  await page.locator('#kernel-verdict').waitFor();
  assert.match(await page.locator('#kernel-verdict').textContent(), /^Verified: kernel \w+ is signed by the server's key [0-9a-f]{16} and intact\.$/);
  assert.match(await page.locator('#kernel-verify').textContent(), /File SHA-256 [0-9a-f]{64} equals the download's ETag/);
  // The same checks refuse altered copies: a byte of the manifest, of a section.
  const refused = await page.evaluate(async (id) => {
    const { verifyKernel } = await import('/console/js/kernel-verify.js');
    const token = JSON.parse(sessionStorage.getItem('kernelize.session')).token;
    const auth = { headers: { Authorization: `Bearer ${token}` } };
    const bytes = new Uint8Array(await (await fetch(`/v1/kernels/${id}/download`, auth)).arrayBuffer());
    const key = await (await fetch('/v1/kernel-signing-key', auth)).json();
    const flip = async (at) => {
      const copy = bytes.slice();
      copy[at] ^= 1;
      return (await verifyKernel(copy.buffer, key)).problem;
    };
    const manifestLen = new DataView(bytes.buffer).getUint32(16, true);
    return [await flip(40), await flip(32 + manifestLen + 64 + 70), await flip(bytes.length - 1), (await verifyKernel(bytes.buffer, key)).ok];
  }, kernelId);
  assert.match(refused[0], /signature does not verify/, refused[0]);
  assert.match(refused[1], /does not match its SHA-256|padding byte is not zero/, refused[1]);
  assert.match(refused[2], /does not match its SHA-256|padding byte is not zero/, refused[2]);
  assert.equal(refused[3], true);
  await tabTo(page, 'textarea[name="kernel-query-text"]', 60);
  await page.keyboard.type('capital city of France');
  await tabTo(page, '#kernel-query button[type="submit"]');
  await page.keyboard.press('Enter');
  await page.locator('#kernel-hits tbody tr').first().waitFor();
  assert.match(await page.locator('#kernel-hits tbody tr').first().textContent(), /^1f1.*The capital of France is Paris\./);
  assert.match(await page.locator('#kernel-query-latency').textContent(), /^4 rows: search [\d.]+ ms/);
  await check(page, 'kernel-verify-query');
  lap('kernel verified and queried');

  // ---------------------------------------------------------------- a reader: no write controls
  const { page: rp } = await openPage(browser, base, problems);
  await signIn(rp, readerKey);
  await goto(rp, '#/programs');
  await rp.getByRole('link', { name: 'qa' }).waitFor();
  assert.equal(await rp.getByRole('heading', { name: 'Register a program' }).count(), 0, 'a reader cannot register');
  await goto(rp, '#/programs/qa');
  await rp.locator('#try-form').waitFor();
  assert.equal(await rp.locator('#compile-form').count(), 0, 'a reader cannot compile');
  assert.equal(await rp.getByRole('button', { name: /Delete program/ }).count(), 0, 'a reader cannot delete');
  await check(rp, 'program-reader');
  await goto(rp, '#/chat');
  await rp.locator('#chat-form').waitFor();
  assert.equal(await rp.getByRole('button', { name: 'Create the chat program' }).count(), 0);

  assert.deepEqual(problems, [], 'no CSP refusals or script errors');
  lap('passed');
} catch (e) {
  await failed(page, dir, problems, e);
} finally {
  await browser.close();
}
