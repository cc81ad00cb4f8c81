// tests/browser/smoke.mjs: the login page renders in English and in Chinese, with no serious
// accessibility problem; screenshots login-en.png and login-zh.png.
//     BASE_URL=http://127.0.0.1:8080 node tests/browser/smoke.mjs
import { checkAxe, expect, launch, newPage, shot, step } from './lib.mjs';

const base = (process.env.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const browser = await launch();
try {
  for (const [lang, prefix, name] of [['en-US', 'en', 'login-en'], ['zh-CN', 'zh', 'login-zh']]) {
    const page = await newPage(browser, { lang });
    await step(`${name}: /ui/login answers with <html lang="${prefix}...">`, async () => {
      const response = await page.goto(`${base}/ui/login`);
      expect(response?.ok(), `GET /ui/login answered ${response?.status()}`);
      const htmlLang = await page.evaluate(() => document.documentElement.lang);
      expect(htmlLang.startsWith(prefix), `<html lang="${htmlLang}">, wanted ${prefix}*`);
    });
    await step(`${name}: no serious accessibility violation`, () => checkAxe(page, `${name} (/ui/login)`));
    await step(`${name}: screenshot`, async () => console.log(`# ${await shot(page, name)}`));
    await page.context().close();
  }
} finally {
  await browser.close();
}
