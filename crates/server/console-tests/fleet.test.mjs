// Browser test of the console's fleet and backups pages: playwright-core drives Debian's
// Chromium (/usr/bin/chromium, or $KZ_CHROMIUM; never a downloaded browser) against a real
// server with real `kernelize-agent` processes (started by
// crates/agent/tests/it/console.rs, which passes their details here).
//
//   node fleet.test.mjs <base-url> <admin-key> <second-admin-key> <artifact-dir> <pid-of-agent-b>
//
// Devices `sensor-a` and `sensor-b` (label test=ui) are accepted and online, `sensor-c`
// is pending. The test accepts and revokes sensor-c, labels sensor-a, makes a dynamic
// group, publishes a release and creates a two-phase deployment (pause after the first)
// in the browser; the second admin approves it and watches the devices' states change
// live (no reload), promotes it to completion and reads a timeline; agent B is killed and
// goes offline on the open page; a deployment to it is paused, resumed and aborted; a
// backup is started and seen to complete; a reader sees no write controls. axe-core runs
// over every view (no serious or critical violations) and screenshots go to
// <artifact-dir>. Exits non-zero on the first failure.

import { artifactDir, checker, failed, launch, openPage } from './harness.mjs';
import assert from 'node:assert/strict';

const [base, adminKey, admin2Key, artifacts, agentBPid] = process.argv.slice(2);
if (!base || !adminKey || !admin2Key || !artifacts || !agentBPid) {
  console.error('usage: node fleet.test.mjs <base-url> <admin-key> <second-admin-key> <artifact-dir> <pid-of-agent-b>');
  process.exit(2);
}
// The whole run is bounded: a hung page fails the test instead of the suite.
const watchdog = setTimeout(() => {
  console.error('[fleet-test] timed out after 300 s');
  process.exit(1);
}, 300000);
const log = (msg) => console.error(`[fleet-test] ${msg}`);
const shared = checker(artifactDir(artifacts), log);

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

const browser = await launch();
const problems = [];
// 401/403/409 are answers the test provokes (a creator approving its own deployment).
const { page } = await openPage(browser, base, problems, /status of 40[139]|status of 429/);
page.setDefaultTimeout(30000);
page.on('dialog', (d) => d.accept());

let shots = 0;
/** No value leaked into the view as text, then a screenshot and axe-core. */
async function check(name) {
  shots += 1;
  await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
  const text = await page.locator('main').innerText();
  assert.ok(!/\b(null|undefined|NaN)\b|\[object /.test(text), `${name}: a value leaked into the page: ${text}`);
  await shared(page, name);
}

async function goto(hash) {
  await page.evaluate((x) => {
    location.hash = x;
  }, hash);
  await page.waitForFunction(() => !document.querySelector('[aria-busy="true"]'));
}

/** Waits until the page's fleet event stream is open. */
async function liveOn() {
  await page.waitForFunction(() => document.querySelector('#fleet-live')?.dataset.state === 'live');
}

async function signIn(key) {
  const input = page.getByLabel('API key');
  await input.waitFor();
  await input.focus();
  await page.keyboard.type(key);
  await page.keyboard.press('Enter');
  await page.locator('#session-info').waitFor();
}

async function signOut() {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API key').waitFor();
}

/** Presses Tab until the focused element's accessible text matches `re`, at most 40 times. */
async function tabTo(re) {
  for (let i = 0; i < 40; i += 1) {
    await page.keyboard.press('Tab');
    const text = await page.evaluate(() => {
      const a = document.activeElement;
      return a ? `${a.textContent || ''} ${a.getAttribute('aria-label') || ''} ${a.name || ''}`.trim() : '';
    });
    if (re.test(text)) return;
  }
  throw new Error(`Tab never reached ${re}`);
}

/** Types into the field labelled `label` with the keyboard. */
async function typeInto(label, text, exact = true) {
  const f = page.getByLabel(label, { exact });
  await f.focus();
  await page.keyboard.press('Control+A');
  await page.keyboard.type(text);
}

const rowState = (device) => page.locator(`#executions tr[data-device="${device}"]`).getAttribute('data-state');

try {
  const { devices } = await call('GET', '/v1/fleet/devices');
  const byName = Object.fromEntries(devices.map((d) => [d.identity, d]));
  const [a, b, c] = ['sensor-a', 'sensor-b', 'sensor-c'].map((n) => byName[n]);
  assert.ok(a && b && c, `three devices: ${JSON.stringify(devices.map((d) => d.identity))}`);
  const { kernels } = await call('GET', '/v1/kernels');
  const kernel = kernels.find((k) => k.state === 'succeeded');
  assert.ok(kernel, 'a built kernel to publish');

  // ---------------------------------------------------------------- devices, live
  await page.goto(`${base}/console/`);
  await signIn(adminKey);
  const nav = await page.locator('#nav a').allTextContents();
  assert.ok(nav.includes('Fleet') && nav.includes('Backups'), `admin nav: ${nav}`);
  await page.getByRole('link', { name: 'Fleet' }).click();
  await page.getByRole('heading', { name: 'Fleet devices' }).waitFor();
  await liveOn();
  for (const d of [a, b]) {
    await page.locator(`tr[data-device="${d.id}"] [data-online="true"]`).waitFor();
  }
  assert.equal(await page.locator(`tr[data-device="${c.id}"]`).getAttribute('data-status'), 'pending');
  assert.match(await page.locator('#device-info').textContent(), /3 devices: 2 of 2 accepted online, 1 pending\./);
  assert.equal(await page.getByRole('button', { name: 'Reject device sensor-c' }).count(), 1, 'a pending device can be rejected');
  await check('fleet-devices');
  await page.evaluate(() => {
    window.kzNoReload = true;
  });
  await page.getByRole('button', { name: 'Accept device sensor-c' }).click();
  await page.waitForFunction((id) => document.querySelector(`tr[data-device="${id}"]`)?.dataset.status === 'accepted', c.id);
  await page.getByRole('button', { name: 'Revoke device sensor-c' }).click();
  await page.waitForFunction((id) => document.querySelector(`tr[data-device="${id}"]`)?.dataset.status === 'revoked', c.id);
  assert.equal((await call('GET', `/v1/fleet/devices/${c.id}`)).status, 'revoked', 'revoked on the server');
  // The status filter, with the keyboard.
  await page.getByLabel('Status', { exact: true }).selectOption('accepted');
  await typeInto('Filter expression', 'labels.test = "ui"');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => /^2 devices:/.test(document.querySelector('#device-info').textContent));

  // ---------------------------------------------------------------- one device: a label
  await page.getByRole('link', { name: 'sensor-a' }).click();
  await page.getByRole('heading', { name: 'Device sensor-a' }).waitFor();
  await typeInto('Label', 'site');
  await page.keyboard.press('Tab');
  await page.keyboard.type('lab-1');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#device-labels').textContent.includes('site=lab-1'));
  assert.equal((await call('GET', `/v1/fleet/devices/${a.id}`)).labels.site, 'lab-1');
  await check('fleet-device');

  // ---------------------------------------------------------------- a dynamic group
  await goto('#/fleet/groups');
  await page.getByRole('heading', { name: 'Create a group' }).waitFor();
  await typeInto('Name', 'lab');
  await page.keyboard.press('Tab');
  await page.keyboard.type('labels.site = "lab-1"');
  await tabTo(/^Create group/);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => [...document.querySelectorAll('tbody tr')].some((tr) => tr.textContent.includes('lab') && tr.textContent.includes('dynamic')));
  assert.equal((await call('GET', '/v1/fleet/groups/lab')).devices, 1, 'one device in the dynamic group');
  await check('fleet-groups');

  // ---------------------------------------------------------------- a release
  await goto('#/fleet/releases');
  await page.getByRole('heading', { name: 'Publish a release' }).waitFor();
  await page.getByLabel('Kernel', { exact: true }).selectOption(kernel.id);
  assert.equal(await page.getByLabel('Version', { exact: true }).inputValue(), '1');
  await page.getByLabel('Channel', { exact: true }).focus();
  await tabTo(/^Publish release/);
  await page.keyboard.press('Enter');
  await page.waitForFunction((k) => [...document.querySelectorAll('tbody tr')].some((tr) => tr.textContent.includes(k)), kernel.id);
  const { releases } = await call('GET', '/v1/fleet/releases');
  assert.equal(releases.length, 1);
  const release = releases[0];
  assert.equal(release.version, 1);
  await check('fleet-releases');

  // ---------------------------------------------------------------- a deployment, made with the keyboard
  await goto('#/fleet/deployments');
  await page.getByRole('heading', { name: 'Create a deployment' }).waitFor();
  await typeInto('Name', 'ui-rollout');
  await typeInto('Target filter', 'labels.test = "ui"');
  await typeInto('Phases', '1, 100%');
  await page.getByLabel('Pause after each phase but the last (until promoted)').focus();
  await page.keyboard.press('Space');
  assert.ok(await page.getByLabel('Pause after each phase but the last (until promoted)').isChecked());
  await tabTo(/^Create deployment/);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Deployment ui-rollout' }).waitFor();
  await page.locator('#approval-note').waitFor();
  const depId = decodeURIComponent(await page.evaluate(() => location.hash.split('/')[3]));
  const created = await call('GET', `/v1/fleet/deployments/${depId}`);
  assert.equal(created.state, 'awaiting_approval');
  assert.deepEqual(created.plan.phases.map((p) => [p.count, p.percent, p.on_success]), [[1, undefined, 'pause'], [undefined, 100, 'next']]);
  // Its creator cannot approve it: the server says so, the page shows it.
  await page.getByRole('button', { name: 'Approve' }).click();
  await page.waitForFunction(() => /principal other than its creator/.test(document.querySelector('#alert').textContent));
  await check('fleet-deployment-awaiting');

  // ---------------------------------------------------------------- the second admin approves; states change live
  await signOut();
  await signIn(admin2Key);
  await goto(`#/fleet/deployments/${encodeURIComponent(depId)}`);
  await page.getByRole('heading', { name: 'Deployment ui-rollout' }).waitFor();
  await liveOn();
  // Every state each device row shows, as the page redraws it.
  await page.evaluate(() => {
    window.kzNoReload = true;
    window.kzSeen = {};
    const note = () => {
      for (const tr of document.querySelectorAll('#executions tr[data-device]')) {
        const seen = (window.kzSeen[tr.dataset.device] ||= []);
        if (seen[seen.length - 1] !== tr.dataset.state) seen.push(tr.dataset.state);
      }
      const st = document.querySelector('#deployment-actions')?.parentElement?.querySelector('[data-state]')?.dataset.state;
      const ds = (window.kzSeen.deployment ||= []);
      if (st && ds[ds.length - 1] !== st) ds.push(st);
    };
    note();
    new MutationObserver(note).observe(document.querySelector('main'), { childList: true, subtree: true });
  });
  await page.getByRole('button', { name: 'Approve' }).click();
  // Phase 1 (one device) runs to success, then the plan pauses the deployment.
  await page.waitForFunction(() => (window.kzSeen.deployment || []).includes('paused'), null, { timeout: 90000 });
  const seen1 = await page.evaluate(() => window.kzSeen);
  const first = [a.id, b.id].find((id) => (seen1[id] || []).includes('succeeded'));
  assert.ok(first, `a device of phase 1 succeeded: ${JSON.stringify(seen1)}`);
  const second = first === a.id ? b.id : a.id;
  assert.ok(seen1[first].some((s) => ['offered', 'downloading', 'downloaded', 'verifying', 'trial'].includes(s)), `an in-progress state was shown: ${seen1[first]}`);
  assert.equal(await rowState(second), 'queued', 'phase 2 waits');
  assert.deepEqual(seen1.deployment.filter((s, i, all) => all.indexOf(s) === i), ['awaiting_approval', 'running', 'paused'], `the deployment's states: ${seen1.deployment}`);
  assert.match(await page.locator("#deployment-reason").textContent(), /promote to go on/);
  await check('fleet-deployment-paused');
  await page.getByRole('button', { name: 'Promote to next phase' }).click();
  await page.waitForFunction(() => (window.kzSeen.deployment || []).includes('completed'), null, { timeout: 90000 });
  await page.waitForFunction((id) => document.querySelector(`#executions tr[data-device="${id}"]`)?.dataset.state === 'succeeded', second);
  assert.ok(await page.evaluate(() => window.kzNoReload === true), 'the page was never reloaded');
  const done = await call('GET', `/v1/fleet/deployments/${depId}`);
  assert.equal(done.state, 'completed');
  assert.equal(done.counts.succeeded, 2);
  assert.match(await page.locator('tr[data-phase="1"]').textContent(), /done.*1 of 1/);
  await check('fleet-deployment-completed');

  // ---------------------------------------------------------------- a device's timeline
  await page.getByRole('link', { name: `Timeline of ${first}` }).click();
  await page.getByRole('heading', { name: `Execution of ${first}` }).waitFor();
  const timeline = await page.locator('#timeline li').evaluateAll((lis) => lis.map((li) => li.dataset.state));
  assert.equal(timeline[0], 'queued');
  assert.equal(timeline[timeline.length - 1], 'succeeded');
  assert.ok(timeline.includes('offered') && timeline.includes('trial'), `timeline: ${timeline}`);
  await check('fleet-execution');

  // ---------------------------------------------------------------- an agent stops: offline, live
  await goto('#/fleet');
  await liveOn();
  await page.evaluate(() => {
    window.kzNoReload = true;
  });
  await page.locator(`tr[data-device="${b.id}"] [data-online="true"]`).waitFor();
  process.kill(Number(agentBPid), 'SIGKILL');
  log(`killed agent sensor-b (pid ${agentBPid})`);
  await page.locator(`tr[data-device="${b.id}"] [data-online="false"]`).waitFor({ timeout: 30000 });
  assert.ok(await page.evaluate(() => window.kzNoReload === true), 'offline shown without a reload');
  await page.locator(`tr[data-device="${a.id}"] [data-online="true"]`).waitFor();
  await check('fleet-devices-offline');

  // ---------------------------------------------------------------- pause, resume, abort (a deployment to the stopped device)
  const stuck = await call('POST', '/v1/fleet/deployments', {
    name: 'to-sensor-b', release_id: release.id, target: { devices: [b.id] }, plan: { phases: [{ percent: 100 }] },
  });
  await goto(`#/fleet/deployments/${encodeURIComponent(stuck.id)}`);
  await page.getByRole('heading', { name: 'Deployment to-sensor-b' }).waitFor();
  const depState = () => page.locator('dl.stats [data-state]').first().getAttribute('data-state');
  await page.getByRole('button', { name: 'Approve' }).click();
  await page.getByRole('button', { name: 'Pause' }).waitFor();
  assert.equal(await depState(), 'running');
  await page.getByRole('button', { name: 'Pause' }).click();
  await page.getByRole('button', { name: 'Resume' }).waitFor();
  assert.equal(await depState(), 'paused');
  assert.equal((await call('GET', `/v1/fleet/deployments/${stuck.id}`)).state, 'paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await page.getByRole('button', { name: 'Pause' }).waitFor();
  assert.equal(await depState(), 'running');
  await page.getByRole('button', { name: 'Abort' }).click();
  await page.waitForFunction(() => document.querySelector('dl.stats [data-state]')?.dataset.state === 'aborted');
  assert.equal(await page.getByRole('button', { name: 'Pause' }).count(), 0, 'no actions on an aborted deployment');
  assert.equal((await call('GET', `/v1/fleet/deployments/${stuck.id}`)).state, 'aborted');
  await check('fleet-deployment-aborted');
  await goto('#/fleet/deployments');
  await page.locator(`tr[data-deployment="${depId}"]`).waitFor();
  await check('fleet-deployments');

  // ---------------------------------------------------------------- backups
  await page.getByRole('link', { name: 'Backups' }).click();
  await page.getByRole('heading', { name: 'Start a backup' }).waitFor();
  await page.evaluate(() => {
    window.kzNoReload = true;
  });
  await page.getByLabel('Format', { exact: true }).focus();
  await tabTo(/^Start backup/);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelectorAll('#backup-list tr[data-backup]').length === 1);
  await page.waitForFunction(() => /succeeded/.test(document.querySelector('#backup-list tr[data-backup]').textContent), null, { timeout: 60000 });
  assert.ok(await page.evaluate(() => window.kzNoReload === true), 'the backup finished on the open page');
  const { backups } = await call('GET', '/v1/backups');
  assert.equal(backups[0].state, 'succeeded');
  assert.ok(backups[0].bytes > 0);
  await check('backups');

  // ---------------------------------------------------------------- a reader sees no write controls
  const reader = (await call('POST', '/v1/keys', { name: 'fleet-reader', role: 'reader' })).key;
  await signOut();
  await signIn(reader);
  const readerNav = await page.locator('#nav a').allTextContents();
  assert.ok(readerNav.includes('Fleet') && !readerNav.includes('Backups'), `reader nav: ${readerNav}`);
  await goto('#/fleet');
  await page.getByRole('heading', { name: 'Fleet devices' }).waitFor();
  await page.locator(`tr[data-device="${a.id}"]`).waitFor();
  assert.equal(await page.getByRole('button', { name: /^(Accept|Reject|Revoke) device/ }).count(), 0, 'no device decisions');
  await goto(`#/fleet/devices/${encodeURIComponent(a.id)}`);
  await page.getByRole('heading', { name: 'Device sensor-a' }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Set label' }).count(), 0, 'no label form');
  await goto('#/fleet/groups');
  await page.getByRole('heading', { name: 'Fleet groups' }).waitFor();
  assert.equal(await page.getByRole('button', { name: /Create group|Delete/ }).count(), 0, 'no group controls');
  await goto('#/fleet/releases');
  await page.getByRole('heading', { name: 'Fleet releases' }).waitFor();
  assert.equal(await page.getByRole('heading', { name: 'Publish a release' }).count(), 0, 'no publishing');
  await goto('#/fleet/deployments');
  await page.getByRole('heading', { name: 'Fleet deployments' }).waitFor();
  assert.equal(await page.getByRole('heading', { name: 'Create a deployment' }).count(), 0, 'no new deployments');
  await goto(`#/fleet/deployments/${encodeURIComponent(stuck.id)}`);
  await page.getByRole('heading', { name: 'Deployment to-sensor-b' }).waitFor();
  assert.equal(await page.locator('#deployment-actions button').count(), 0, 'no deployment actions');
  await check('fleet-reader');
  await goto('#/backups');
  assert.match(await page.locator('#alert').textContent(), /Backups view needs an admin key/);

  const csp = problems.filter((p) => p.startsWith('CSP'));
  assert.deepEqual(csp, [], 'nothing refused by the CSP');
  assert.deepEqual(problems, [], 'no script errors');
  log(`passed; ${shots} screenshots in ${artifacts}`);
} catch (e) {
  await failed(page, artifacts, problems, e);
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
