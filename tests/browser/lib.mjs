// tests/browser/lib.mjs: helpers for the browser tests of Fleetyard's server-rendered pages
// (/ui/). Plain node scripts (`node tests/browser/smoke.mjs`), no test runner: playwright-core
// drives Debian's chromium (deploy/need-chromium.sh; never a downloaded browser), axe-core
// checks accessibility, and each check prints one TAP-like line, `ok - name` or
// `not ok - name`, the first failure ending the script with a non-zero status.
//
// Setup: deploy/need-chromium.sh && deploy/need-node-modules.sh tests/browser
// Environment: CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (default
// tests/browser/screenshots, ignored by git).

import { mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const axePath = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
let axeSource; // read once, on first use

// Chromium as a quiet, offline-friendly headless browser; --no-sandbox since the tests may
// run as root (containers, CI).
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync',
];

/** Starts chromium; close it with `await browser.close()`. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ARGS,
  });
}

/**
 * A page in a fresh context (own cookies), in language `lang` ('en-US' or 'zh-CN') and the
 * Asia/Shanghai time zone. The locale sets navigator.language and the Accept-Language header
 * of every request to exactly `lang` (an extra Accept-Language header would not do: chromium
 * sends it with fetch() but the locale's with navigations). Uncaught script errors of the
 * page are printed as `# pageerror: ...` comments.
 */
export async function newPage(browser, { lang = 'en-US' } = {}) {
  if (lang !== 'en-US' && lang !== 'zh-CN') throw new Error(`newPage: unsupported lang ${lang}`);
  const context = await browser.newContext({ locale: lang, timezoneId: 'Asia/Shanghai' });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`# pageerror: ${String(e.message).split('\n')[0]}`));
  return page;
}

const isLogin = (url) => new URL(url).pathname.replace(/\/+$/, '') === '/ui/login';

/**
 * Signs in through the login form (form#login at `${base}/ui/login`) and waits until the
 * browser has left /ui/login; throws with the page's visible error text if it stays there.
 */
export async function login(page, base, email, password, { timeout = 15000 } = {}) {
  await page.goto(`${base.replace(/\/+$/, '')}/ui/login`);
  const form = page.locator('form#login');
  await form.locator('input[name=email]').fill(email);
  await form.locator('input[name=password]').fill(password);
  // The next document committed in the main frame is the answer to the form (after redirects).
  // No navigation at all (say the browser refused to submit) ends in the error below too.
  const navigated = page
    .waitForEvent('framenavigated', { predicate: (frame) => frame === page.mainFrame(), timeout })
    .catch(() => null);
  await form.locator('button[type=submit], input[type=submit], button:not([type])').first().click();
  await navigated;
  await page.waitForLoadState('load');
  if (!isLogin(page.url())) return;
  const errors = await page
    .locator('[role=alert], [aria-live], .error, .errors, .alert, .flash, .notice')
    .filter({ visible: true })
    .allInnerTexts();
  let text = errors.map((t) => t.trim()).filter(Boolean).join(' | ');
  if (!text) text = (await page.locator('body').innerText()).trim().slice(0, 500);
  throw new Error(`login as ${email} stayed on ${page.url()}: ${text || '(no text on the page)'}`);
}

/**
 * Runs axe-core on the whole page and throws, naming `label`, if it finds any violation of
 * impact serious or critical (each with its rule id, help text, impact and up to 3 of the
 * offending elements' selectors). axe is evaluated through the DevTools protocol rather than
 * added as a <script>, so a strict Content-Security-Policy on the page does not stop it.
 */
export async function checkAxe(page, label) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) {
    axeSource ??= await readFile(axePath, 'utf8');
    await page.evaluate(axeSource);
  }
  const violations = await page.evaluate(async () => {
    const results = await window.axe.run(document, { resultTypes: ['violations'] });
    return results.violations.map((v) => ({
      id: v.id, help: v.help, impact: v.impact,
      targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')),
    }));
  });
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    const lines = bad.map((v) => `  ${v.id} (${v.impact}): ${v.help} at ${v.targets.join(', ')}`);
    throw new Error(`axe: ${bad.length} serious or critical violation(s) on ${label}:\n${lines.join('\n')}`);
  }
}

/** Saves a full-page PNG of `page` as `${name}.png` in SCREENSHOT_DIR; returns its path. */
export async function shot(page, name) {
  const dir = path.resolve(process.env.SCREENSHOT_DIR || path.join(here, 'screenshots'));
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Runs `await fn()`, prints `ok - name` or `not ok - name` and the error; rethrows. */
export async function step(name, fn) {
  try {
    const value = await fn();
    console.log(`ok - ${name}`);
    return value;
  } catch (e) {
    console.log(`not ok - ${name}`);
    console.log(String(e?.stack || e).split('\n').map((l) => `# ${l}`).join('\n'));
    throw e;
  }
}

/** Throws Error(message) unless `cond` is truthy. */
export function expect(cond, message) {
  if (!cond) throw new Error(message);
}
