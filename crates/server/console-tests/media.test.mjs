// Browser test of image and audio records in the console, in Debian's Chromium against a
// real `kernelize serve` (tests/it/media.rs made `photos`, an image collection, and
// `voices`, an audio one, through the API with kept files).
//
//   node media.test.mjs <base-url> <reader-key> <artifact-dir>
//
// Signs in with a reader key, opens the record browser of `photos`: every row shows its
// thumbnail, decoded by the browser (the file fetched with the session's token into a
// blob: URL under the console's CSP); a record's details show the image with its format,
// size and label. Then `voices`: a record's details hold an audio player whose clip loads
// (its duration is known). Screenshots and axe-core on every state shown.

import assert from 'node:assert/strict';
import { artifactDir, checker, failed, launch, logger, openPage } from './harness.mjs';

const [base, key, dir] = process.argv.slice(2);
if (!base || !key || !dir) {
  console.error('usage: node media.test.mjs <base-url> <reader-key> <artifact-dir>');
  process.exit(2);
}
const log = logger('media-test');
const check = checker(artifactDir(dir), log);
const problems = [];
const browser = await launch();

const { page } = await openPage(browser, base, problems);
try {
  await page.goto(`${base}/console/`);
  await page.locator('input[name="api-key"]').fill(key);
  await page.keyboard.press('Enter');
  await page.locator('#session-info').waitFor();

  await page.goto(`${base}/console/#/records/photos`);
  await page.locator('#page-info').waitFor();
  const thumbs = page.locator('img.thumb');
  const n = await thumbs.count();
  assert.ok(n >= 3, `a thumbnail per record (got ${n})`);
  await page.waitForFunction(() => [...document.querySelectorAll('img.thumb')].every((i) => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:')));
  assert.match(await thumbs.first().getAttribute('alt'), /^Image of record \S+: (JPEG|PNG|WebP), \d+×\d+/);
  await check(page, 'media-thumbnails');

  await page.locator('main button', { hasText: 'img0' }).first().click();
  await page.locator('figure.media img.media-view').waitFor();
  await page.waitForFunction(() => {
    const i = document.querySelector('figure.media img.media-view');
    return i && i.complete && i.naturalWidth > 0;
  });
  assert.match(await page.locator('figure.media figcaption').textContent(), /\d+×\d+/);
  await check(page, 'media-image-detail');

  await page.goto(`${base}/console/#/records/voices`);
  await page.locator('#page-info').waitFor();
  await page.locator('main button', { hasText: 'clip0' }).first().click();
  const audio = page.locator('figure.media audio');
  await audio.waitFor();
  await page.waitForFunction(() => {
    const a = document.querySelector('figure.media audio');
    return a && a.src.startsWith('blob:') && Number.isFinite(a.duration) && a.duration > 0.1;
  });
  assert.match(await page.locator('figure.media figcaption').textContent(), /\d+\.\d s/);
  await check(page, 'media-audio-detail');

  assert.deepEqual(problems, [], 'no CSP refusals or script errors');
  log('passed');
} catch (e) {
  await failed(page, dir, problems, e);
} finally {
  await browser.close();
}
