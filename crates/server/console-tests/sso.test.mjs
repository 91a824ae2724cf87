// Browser test of single sign-on: the console at <base-url> (a real `kernelize serve`
// whose [sso] names the real OpenID provider that tests/it/sso.rs started with
// oidc-provider.mjs), driven in Debian's Chromium, through the provider's own login and
// consent pages.
//
//   node sso.test.mjs <base-url> <artifact-dir>
//
// ann (group readers → reader of docs) sees no write controls, and her sign-out revokes
// the token on the server (it then gets 401); bob (admins → admin) sees the admin views;
// eve (contractors, mapped to nothing) is refused with a clear message; a callback with a
// forged state is refused. The sign-in form is used with the keyboard. Screenshots and
// axe-core (zero serious or critical violations) on every console view shown.

import assert from 'node:assert/strict';
import { artifactDir, checker, failed, launch, logger, openPage, tabTo } from './harness.mjs';

const [base, dir] = process.argv.slice(2);
if (!base || !dir) {
  console.error('usage: node sso.test.mjs <base-url> <artifact-dir>');
  process.exit(2);
}
const log = logger('sso-test');
const check = checker(artifactDir(dir), log);
const problems = [];
const browser = await launch();

/** Signs `user` in through the provider, in a fresh browser (no provider session). */
async function signInAs(user, { keyboard = false } = {}) {
  const { context, page } = await openPage(browser, base, problems);
  await page.goto(`${base}/console/`);
  await page.locator('#sso-login').waitFor();
  if (keyboard) {
    await tabTo(page, '#sso-login');
    await Promise.all([page.waitForURL((u) => !u.href.startsWith(base)), page.keyboard.press('Enter')]);
  } else {
    await Promise.all([page.waitForURL((u) => !u.href.startsWith(base)), page.locator('#sso-login').click()]);
  }
  // The provider's development login page (any password), then its consent page.
  await page.locator('input[name="login"]').fill(user);
  await page.locator('input[name="password"]').fill('any password');
  await page.locator('button[type="submit"]').click();
  await page.locator('button[type="submit"]', { hasText: 'Continue' }).click();
  await page.waitForURL((u) => u.href.startsWith(`${base}/console/`));
  return { context, page };
}

try {
  // ------------------------------------------------------------------- the sign-in page
  {
    const { context, page } = await openPage(browser, base, problems);
    await page.goto(`${base}/console/`);
    await page.locator('#sso-login').waitFor();
    assert.equal(await page.locator('#sso-login').textContent(), 'Sign in with Test IdP');
    await check(page, 'sso-sign-in');
    // A forged callback comes back to the sign-in form with the reason.
    await page.goto(`${base}/v1/sso/callback?code=forged&state=forged`);
    await page.locator('#signin-reason').waitFor();
    assert.match(await page.locator('#signin-reason').textContent(), /could not be matched to this browser/);
    await check(page, 'sso-forged-state');
    await context.close();
  }

  // ------------------------------------------------- ann: readers → reader of docs only
  {
    const { context, page } = await signInAs('ann', { keyboard: true });
    await page.locator('#session-info').waitFor();
    const info = await page.locator('#session-info').textContent();
    assert.match(info, /Ann Reader · reader · docs/, info);
    const nav = await page.locator('#nav').textContent();
    assert.ok(!/Keys|Audit log|Usage/.test(nav), `a reader has no admin views: ${nav}`);
    await check(page, 'sso-reader-overview');
    await page.goto(`${base}/console/#/collections`);
    await page.locator('h1', { hasText: 'Collections' }).waitFor();
    await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
    assert.equal(await page.locator('button', { hasText: /Create collection/ }).count(), 0, 'no create form for a reader');
    assert.equal(await page.locator('button', { hasText: /^Drop/ }).count(), 0, 'no drop buttons for a reader');
    await check(page, 'sso-reader-collections');
    // Nothing of the session is in localStorage, and the token works until sign-out.
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'localStorage stays empty');
    const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('kernelize.session')).token);
    const get = (path) => fetch(base + path, { headers: { Authorization: `Bearer ${token}` } }).then((r) => r.status);
    assert.equal(await get('/v1/collections/docs'), 200);
    assert.equal(await get('/v1/keys'), 403, 'a reader cannot list keys');
    // Sign out with the keyboard: the session is revoked on the server.
    await tabTo(page, '#who button');
    await page.keyboard.press('Enter');
    await page.locator('#signin-title').waitFor();
    await page.waitForFunction(() => sessionStorage.getItem('kernelize.session') === null);
    assert.equal(await get('/v1/collections/docs'), 401, 'the signed-out token is refused');
    await check(page, 'sso-signed-out');
    await context.close();
  }

  // ----------------------------------------------------------- bob: admins → admin
  {
    const { context, page } = await signInAs('bob');
    await page.locator('#session-info').waitFor();
    assert.match(await page.locator('#session-info').textContent(), /Bob Admin · admin · all collections/);
    await page.locator('#nav a', { hasText: 'Keys' }).waitFor();
    await page.goto(`${base}/console/#/collections`);
    await page.locator('button', { hasText: /Create collection/ }).waitFor();
    await check(page, 'sso-admin-collections');
    await page.goto(`${base}/console/#/audit`);
    await page.locator('h1', { hasText: 'Audit log' }).waitFor();
    await check(page, 'sso-admin-audit');
    await context.close();
  }

  // ------------------------------------------------ eve: in no mapped group → refused
  {
    const { context, page } = await signInAs('eve');
    await page.locator('#signin-reason').waitFor();
    const reason = await page.locator('#signin-reason').textContent();
    assert.match(reason, /none of the groups that this server gives access to/, reason);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('kernelize.session')), null);
    await check(page, 'sso-refused');
    await context.close();
  }

  assert.deepEqual(problems, [], 'no CSP refusals or script errors');
  log('passed');
} catch (e) {
  await failed(null, null, problems, e);
} finally {
  await browser.close();
}
