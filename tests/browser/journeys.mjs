// tests/browser/journeys.mjs: the journeys of issue #14 in a real browser (Debian's chromium,
// headless, driven by playwright-core), against a seeded server:
//   - ops sign in and open every page; a donor registers a donation with a mistake, sees the
//     error next to the field, fixes it; ops approve it, find its machine, filter, export CSV;
//     the pages switch to Chinese; another donor is refused the first donor's pages; a form
//     posted without its CSRF token is refused; the registration form is walked by keyboard;
//   - axe-core on every page (no serious or critical violation);
//   - a screenshot of every main page in both languages (SCREENSHOT_DIR).
// Run by tests/tests/api/browser.rs, which seeds the server and passes:
//   BASE_URL OPS_EMAIL DONOR_EMAIL OTHER_DONOR_EMAIL PASSWORD DONOR_SITE_ID OTHER_DONATION_ID
import { readFile } from 'node:fs/promises';
import { checkAxe, expect, launch, login, newPage, shot, step } from './lib.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('BASE_URL').replace(/\/+$/, '');
const password = env('PASSWORD');

/** Opens `path`, expects `status`, runs axe, and saves a screenshot named `name`. */
async function visit(page, path, name, { status = 200 } = {}) {
  const response = await page.goto(`${base}${path}`);
  expect(response?.status() === status, `GET ${path} answered ${response?.status()}, wanted ${status}`);
  await checkAxe(page, `${name} (${path})`);
  if (name) console.log(`# ${await shot(page, name)}`);
  return response;
}

const browser = await launch();
try {
  // ---- Ops, in English: every page opens, passes axe, and is photographed. -----------------
  const ops = await newPage(browser, { lang: 'en-US' });
  await step('the sign-in page passes axe in English', () => visit(ops, '/ui/login', 'login-en'));
  await step('ops sign in with the API\'s account', () => login(ops, base, env('OPS_EMAIL'), password));
  await step('ops land on the dashboard', async () => {
    expect(new URL(ops.url()).pathname === '/ui/dashboard', `landed on ${ops.url()}`);
    expect((await ops.locator('html').getAttribute('lang')) === 'en', 'the page is in English');
  });
  for (const [path, name] of [
    ['/ui/dashboard', 'dashboard-en'], ['/ui/machines', 'machines-en'], ['/ui/donations', 'review-en'],
    ['/ui/queue', 'queue-en'], ['/ui/audit', 'audit-en'],
  ]) {
    await step(`ops open ${path}: no serious accessibility violation, screenshot`, () => visit(ops, path, name));
  }
  await step('the dashboard draws its utilisation chart', async () => {
    await ops.goto(`${base}/ui/dashboard`);
    await ops.locator('#utilisation-chart canvas').first().waitFor({ timeout: 5000 });
  });

  // ---- A donor registers through the form: a mistake, shown next to its field; fixed. -----
  const donor = await newPage(browser, { lang: 'en-US' });
  await step('a donor signs in and lands on its donations', async () => {
    await login(donor, base, env('DONOR_EMAIL'), password);
    expect(new URL(donor.url()).pathname === '/ui/donations', `landed on ${donor.url()}`);
  });
  await step('the registration form passes axe', () => visit(donor, '/ui/donations/new', 'register-en'));
  await step('keyboard only: Tab reaches every field of the form, in order, and the submit button', async () => {
    await donor.goto(`${base}/ui/donations/new`);
    await donor.locator('#model').focus();
    const seen = [];
    for (let i = 0; i < 80; i++) {
      seen.push(await donor.evaluate(() => document.activeElement?.id || document.activeElement?.tagName));
      if (seen.at(-1) === 'submit-donation') break;
      await donor.keyboard.press('Tab');
    }
    const order = ['model', 'site_id', 'agreement_ref', 'description', 'starts_on', 'ends_on', 'm0-hostname',
      'm0-asset_tag', 'm0-arch', 'm0-cpu_model', 'm0-cpu_cores', 'm0-memory_mib', 'm0-disk_gib', 'time_zone',
      'max_concurrent_leases', 'max_lease_minutes', 'w0-start', 'w0-end', 'submit-donation'];
    let at = -1;
    for (const id of order) {
      const next = seen.indexOf(id, at + 1);
      expect(next > at, `Tab never reached #${id} after #${seen[at] ?? 'model'} (focus went: ${seen.join(' → ')})`);
      at = next;
    }
  });
  await step('Enter in a field sends the form (it does not add a machine row)', async () => {
    await donor.goto(`${base}/ui/donations/new`);
    await donor.fill('#agreement_ref', 'PLUM-ENTER');
    await Promise.all([donor.waitForLoadState('load'), donor.press('#agreement_ref', 'Enter')]);
    expect(await donor.locator('#form-errors').isVisible(), 'Enter did not send the form');
    expect((await donor.locator('#m1-hostname').count()) === 0, 'Enter added a machine row instead');
  });
  let donationUrl;
  await step('a mistake is refused with the error next to the field, and what was typed is kept', async () => {
    await donor.goto(`${base}/ui/donations/new`);
    await donor.selectOption('#model', 'usage_right');
    await donor.selectOption('#site_id', env('DONOR_SITE_ID'));
    await donor.fill('#agreement_ref', 'PLUM-BROWSER-1');
    await donor.fill('#m0-hostname', 'rv-browser-1');
    await donor.selectOption('#m0-arch', 'riscv64');
    await donor.fill('#m0-cpu_model', 'SG2042');
    await donor.fill('#m0-cpu_cores', '0');
    await donor.fill('#m0-memory_mib', '131072');
    await donor.fill('#m0-disk_gib', '1024');
    await donor.check('input[name="usage_policy.purposes"][value="ci"]');
    await donor.fill('#max_concurrent_leases', '2');
    await donor.fill('#max_lease_minutes', '240');
    await donor.check('input[name="usage_policy.windows[0].days"][value="sat"]');
    await donor.fill('#w0-start', '20:00');
    await donor.fill('#w0-end', '24:00');
    await Promise.all([donor.waitForLoadState('load'), donor.click('#submit-donation')]);
    const error = donor.locator('#m0-cpu_cores-error');
    expect(await error.isVisible(), 'no error next to the CPU cores field');
    expect((await donor.locator('#m0-cpu_cores').getAttribute('aria-invalid')) === 'true', 'the field is not marked invalid');
    expect((await donor.locator('#m0-cpu_cores').getAttribute('aria-describedby')) === 'm0-cpu_cores-error', 'the error is not tied to the field');
    expect((await donor.inputValue('#m0-hostname')) === 'rv-browser-1', 'the hostname typed was lost');
    await checkAxe(donor, 'the registration form with an error');
    console.log(`# ${await shot(donor, 'register-error-en')}`);
  });
  await step('fixed, the donation is registered and its page shown', async () => {
    await donor.fill('#m0-cpu_cores', '64');
    await Promise.all([donor.waitForURL(/\/ui\/donations\/[0-9a-f-]{36}$/), donor.click('#submit-donation')]);
    donationUrl = donor.url();
    expect((await donor.locator('main').innerText()).includes('PLUM-BROWSER-1'), 'the donation page does not show it');
    await checkAxe(donor, 'the donation page');
    console.log(`# ${await shot(donor, 'donation-en')}`);
  });
  await step('a form posted without its CSRF token is refused', async () => {
    await donor.goto(`${base}/ui/donations/new`);
    await donor.evaluate(() => document.querySelector('#register input[name=_csrf]').remove());
    await donor.fill('#agreement_ref', 'PLUM-BROWSER-CSRF');
    const [response] = await Promise.all([
      donor.waitForResponse((r) => r.url().endsWith('/ui/donations/new') && r.request().method() === 'POST'),
      donor.click('#submit-donation'),
    ]);
    expect(response.status() === 403, `a form without its token answered ${response.status()}`);
    expect((await donor.locator('[role=alert]').innerText()).includes('security token'), 'no explanation shown');
  });

  // ---- Ops approve it, find its machine, filter, export CSV. -------------------------------
  await step('ops approve the donation from its page', async () => {
    await ops.goto(donationUrl);
    await Promise.all([ops.waitForLoadState('load'), ops.click('#approve')]);
    expect((await ops.locator('h1 .badge').innerText()).trim() === 'approved', 'the donation is not approved');
  });
  await step('ops find the machine with a filter and a search', async () => {
    await ops.goto(`${base}/ui/machines`);
    await ops.selectOption('#arch', 'riscv64');
    await ops.fill('#q', 'rv-browser');
    await Promise.all([ops.waitForURL(/arch=riscv64/), ops.click('form.filters button[type=submit]')]);
    const rows = ops.locator('#machine-list tbody tr');
    expect((await rows.count()) === 1, `${await rows.count()} rows, wanted 1`);
    expect((await rows.first().innerText()).includes('rv-browser-1'), 'the machine is not listed');
  });
  await step('ops export the filtered list as CSV', async () => {
    const [download] = await Promise.all([ops.waitForEvent('download'), ops.click('#export')]);
    const text = await readFile(await download.path(), 'utf8');
    const lines = text.trim().split('\n');
    expect(lines[0].startsWith('id,hostname,asset_tag,arch'), `header: ${lines[0]}`);
    expect(lines.length === 2 && lines[1].includes('rv-browser-1'), `CSV rows: ${lines.slice(1).join(' | ')}`);
  });
  await step('ops open the machine\'s page', async () => {
    await ops.click('#machine-list tbody a');
    await ops.waitForURL(/\/ui\/machines\/[0-9a-f-]{36}$/);
    await checkAxe(ops, 'the machine page');
    console.log(`# ${await shot(ops, 'machine-en')}`);
  });
  const machineUrl = ops.url();

  // ---- Chinese. ------------------------------------------------------------------------------
  await step('ops switch the pages to Chinese', async () => {
    await ops.goto(`${base}/ui/dashboard`);
    await Promise.all([ops.waitForLoadState('load'), ops.click('button[lang="zh-CN"]')]);
    expect((await ops.locator('html').getAttribute('lang')) === 'zh-CN', 'the page is not in Chinese');
    expect((await ops.locator('h1').innerText()).includes('机群总览'), 'the heading is not translated');
  });
  for (const [path, name] of [
    ['/ui/dashboard', 'dashboard-zh'], ['/ui/machines', 'machines-zh'], [new URL(machineUrl).pathname, 'machine-zh'],
    ['/ui/donations', 'review-zh'], [new URL(donationUrl).pathname, 'donation-zh'], ['/ui/queue', 'queue-zh'],
    ['/ui/audit', 'audit-zh'],
  ]) {
    await step(`in Chinese, ${name}: axe and screenshot`, () => visit(ops, path, name));
  }
  const donorZh = await newPage(browser, { lang: 'zh-CN' });
  await step('a donor whose browser asks for Chinese gets Chinese pages', async () => {
    await visit(donorZh, '/ui/login', 'login-zh');
    await login(donorZh, base, env('DONOR_EMAIL'), password);
    expect((await donorZh.locator('html').getAttribute('lang')) === 'zh-CN', 'not Chinese');
  });
  for (const [path, name] of [
    ['/ui/donations', 'donations-donor-zh'], ['/ui/donations/new', 'register-zh'], ['/ui/usage', 'usage-zh'],
    ['/ui/machines', 'machines-donor-zh'],
  ]) {
    await step(`the donor in Chinese, ${name}: axe and screenshot`, () => visit(donorZh, path, name));
  }
  for (const [path, name] of [['/ui/donations', 'donations-donor-en'], ['/ui/usage', 'usage-en'], ['/ui/machines', 'machines-donor-en']]) {
    await step(`the donor in English, ${name}: axe and screenshot`, () => visit(donor, path, name));
  }

  // ---- Another donor is refused the first one's pages. --------------------------------------
  const other = await newPage(browser, { lang: 'en-US' });
  await step('another donor signs in', () => login(other, base, env('OTHER_DONOR_EMAIL'), password));
  await step('another donor is refused the first donor\'s donation and machine pages', async () => {
    await visit(other, new URL(donationUrl).pathname, 'refused-en', { status: 404 });
    await visit(other, new URL(machineUrl).pathname, null, { status: 404 });
    const list = await (await other.goto(`${base}/ui/donations`)).text();
    expect(!list.includes('PLUM-BROWSER-1'), 'the first donor\'s donation is listed for another donor');
  });
  await step('a donor is refused the pages of ops', async () => {
    await visit(other, '/ui/dashboard', null, { status: 403 });
  });
  await step('the first donor cannot open a donation of the other donor', async () => {
    await visit(donor, `/ui/donations/${env('OTHER_DONATION_ID')}`, null, { status: 404 });
  });

  // ---- Signing out. -------------------------------------------------------------------------
  await step('signing out ends the session', async () => {
    await donor.goto(`${base}/ui/donations`);
    await Promise.all([donor.waitForURL(/\/ui\/login/), donor.click('form[action="/ui/logout"] button')]);
    await donor.goto(`${base}/ui/donations`);
    expect(new URL(donor.url()).pathname === '/ui/login', 'still signed in after signing out');
  });
} finally {
  await browser.close();
}
