// Opens every page of the preview gallery in headless Chromium, the way a
// marketer would, and fails on anything a person would notice: a page that
// does not load, an empty subject, a broken image, a console error. Then
// opens each email itself (the document the page shows in its iframe) at
// the widths of a phone and of a desktop reading pane, screenshots it, and
// fails on horizontal overflow: a document wider than the screen, or an
// element reaching past its right edge, named with its page and width.
//
//   node gallery.mjs AFTERCARE_BIN TEMPLATES_DIR WORK_DIR ARTIFACTS_DIR
//
// Screenshots go to ARTIFACTS_DIR/<width>/<locale>/<email>.png, and in dark
// mode (for the order confirmations) to ARTIFACTS_DIR/<width>-dark/.
// Prints one JSON line with what it saw; exits 1 on any problem. Everything
// listens on loopback and is stopped before the script ends.
//
// Environment: BROKEN_LOGO=1 does not serve the logo (the script must
// notice); ONLY=en/,hy/welcome opens only the pages whose link starts with
// one of these; WIDTHS=375,600 overrides the widths.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, join } from 'node:path';
import readline from 'node:readline';

import { launch } from './chromium.mjs';

// A full-page screenshot, tried again after a moment: under load Chromium
// now and then answers "Unable to capture screenshot" for a tall page.
async function shoot(tab, path) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await tab.screenshot({ path, fullPage: true });
    } catch (e) {
      if (attempt >= 3) throw e;
      await new Promise((done) => setTimeout(done, 500 * attempt));
    }
  }
}

const [bin, templatesDir, workDir, artifacts] = process.argv.slice(2);
const WIDTHS = (process.env.WIDTHS ?? '320,375,600').split(',').map(Number);
const ONLY = process.env.ONLY ? process.env.ONLY.split(',') : null;
// Emails also shot in dark mode, at the first width above 320.
const DARK = /\/order_confirmation(\.[^.]+)*\.html$/;
const DEADLINE_MS = 240_000;

// A 1x1 PNG: the shop's logo, served locally (the machine has no network).
const LOGO = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==',
  'base64',
);

const problems = [];
const timer = setTimeout(() => {
  console.error('browser test: over its time limit');
  process.exit(1);
}, DEADLINE_MS);

const logoServer = http.createServer((req, res) => {
  if (req.url === '/logo.png' && process.env.BROKEN_LOGO !== '1') {
    res.writeHead(200, { 'content-type': 'image/png' }).end(LOGO);
  } else {
    res.writeHead(404).end();
  }
});
logoServer.listen(0, '127.0.0.1');
await once(logoServer, 'listening');
const logoUrl = `http://127.0.0.1:${logoServer.address().port}/logo.png`;

mkdirSync(workDir, { recursive: true });
mkdirSync(artifacts, { recursive: true });
const config = join(workDir, 'aftercare.toml');
writeFileSync(
  config,
  `data_dir = ${JSON.stringify(join(workDir, 'data'))}\n` +
    `templates_dir = ${JSON.stringify(templatesDir)}\n` +
    `[shop]\nlogo_url = ${JSON.stringify(logoUrl)}\n`,
);
const preview = spawn(
  bin,
  ['--config', config, 'preview', '--serve', '--listen', '127.0.0.1:0', '--out', join(workDir, 'gallery')],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
const [firstLine] = await once(readline.createInterface({ input: preview.stdout }), 'line');
const base = firstLine.match(/http:\/\/127\.0\.0\.1:\d+/)?.[0];
if (!base) throw new Error(`no address in: ${firstLine}`);

// Runs in the email: what reaches past the right edge of the screen. A
// block that grows its table drags its neighbours along, so the culprits
// named are the innermost elements whose removal ends the overflow (or,
// when no one element does, the innermost ones past the edge). Only run
// when there is an overflow: it lays the email out again per element.
function overflow() {
  const width = document.documentElement.clientWidth;
  const shown = () =>
    [...document.body.querySelectorAll('*')].filter((el) => {
      const box = el.getBoundingClientRect();
      return !(box.width === 0 && box.height === 0);
    });
  const past = () => shown().filter((el) => el.getBoundingClientRect().right > width + 0.5);
  const wide = () => document.documentElement.scrollWidth > width || past().length > 0;
  const offenders = past();
  if (!wide()) return { width, found: [] };
  let culprits = shown().filter((el) => {
    const display = el.style.display;
    el.style.display = 'none';
    const fixed = !wide();
    el.style.display = display;
    return fixed;
  });
  if (culprits.length === 0) culprits = offenders;
  culprits = culprits.filter((el) => !culprits.some((other) => other !== el && el.contains(other)));
  const found = culprits.slice(0, 5).map((el) => {
    const cls = el.getAttribute('class');
    const text = (el.textContent ?? '').trim().replace(/\s+/g, ' ').slice(0, 40);
    const right = Math.round(el.getBoundingClientRect().right);
    return `<${el.tagName.toLowerCase()}${cls ? ` class="${cls}"` : ''}> "${text}" reaches ${right}px`;
  });
  if (culprits.length > 5) found.push(`and ${culprits.length - 5} more elements`);
  if (found.length === 0) found.push(`the document is ${document.documentElement.scrollWidth}px wide`);
  return { width, found };
}

const browser = await launch();
let pages = 0;
let images = 0;
const emails = [];
const shots = [];
const dark = [];
try {
  const context = await browser.newContext({ viewport: { width: 900, height: 1200 } });
  // One tab per width, reused for every email.
  const tabs = [];
  for (const width of WIDTHS) {
    const ctx = await browser.newContext({ viewport: { width, height: 800 } });
    tabs.push({ width, tab: await ctx.newPage() });
  }
  const darkWidth = WIDTHS.find((w) => w > 320) ?? WIDTHS[0];
  const darkTab = await (await browser.newContext({ viewport: { width: darkWidth, height: 800 }, colorScheme: 'dark' })).newPage();
  const index = await context.newPage();
  await index.goto(`${base}/`);
  const all = await index.$$eval('a', (as) => as.map((a) => a.getAttribute('href')));
  const links = ONLY ? all.filter((l) => ONLY.some((prefix) => l.startsWith(prefix))) : all;
  if (links.length === 0) problems.push('the index links no page');
  const page = await context.newPage();
  let current = null;
  page.on('console', (m) => m.type() === 'error' && problems.push(`${current}: console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`${current}: ${e.message}`));
  for (const link of links) {
    current = link;
    const pageUrl = `${base}/${link}`;
    const response = await page.goto(pageUrl, { waitUntil: 'load' });
    if (!response || response.status() !== 200) {
      problems.push(`${link}: HTTP ${response?.status()}`);
      continue;
    }
    const subject = (await page.textContent('.subject'))?.trim() ?? '';
    if (!subject) problems.push(`${link}: empty subject`);
    const iframe = await page.$('iframe');
    if (!iframe) {
      problems.push(`${link}: no email in the page`);
      continue;
    }
    const frame = await iframe.contentFrame();
    await frame.waitForLoadState('load');
    const broken = await frame.$$eval('img', (imgs) =>
      imgs.map((i) => ({ src: i.src, ok: i.complete && i.naturalWidth > 0 })),
    );
    images += broken.length;
    for (const img of broken.filter((i) => !i.ok)) problems.push(`${link}: broken image ${img.src}`);
    const text = (await frame.textContent('body'))?.trim() ?? '';
    if (text.length < 100) problems.push(`${link}: the email shows almost nothing`);
    pages += 1;

    // The email itself, as a phone or a reading pane of that width shows it.
    const email = new URL(await iframe.getAttribute('src'), pageUrl);
    const name = email.pathname.replace(/^\//, '').replace(/\.html$/, '');
    emails.push({ page: link, email: `${name}.html` });
    for (const { width, tab } of tabs) {
      await tab.goto(email.href, { waitUntil: 'load' });
      const { width: seen, found } = await tab.evaluate(overflow);
      if (seen !== width) problems.push(`${name}.html at ${width}px: the screen is ${seen}px wide`);
      for (const f of found) problems.push(`${name}.html at ${width}px: overflow: ${f}`);
      const shot = join(artifacts, String(width), `${name}.png`);
      mkdirSync(dirname(shot), { recursive: true });
      await shoot(tab, shot);
      shots.push(`${width}/${name}.png`);
    }
    if (DARK.test(email.pathname)) {
      await darkTab.goto(email.href, { waitUntil: 'load' });
      const colors = await darkTab.evaluate(() => {
        const bg = (sel) => getComputedStyle(document.querySelector(sel)).backgroundColor;
        return { body: bg('body'), card: bg('table.container') };
      });
      dark.push({ email: `${name}.html`, ...colors });
      const shot = join(artifacts, `${darkWidth}-dark`, `${name}.png`);
      mkdirSync(dirname(shot), { recursive: true });
      await shoot(darkTab, shot);
    }
  }
} finally {
  await browser.close();
  preview.kill();
  logoServer.close();
  clearTimeout(timer);
}
console.log(JSON.stringify({ pages, images, widths: WIDTHS, emails, shots, dark, problems }));
process.exit(problems.length === 0 ? 0 : 1);
