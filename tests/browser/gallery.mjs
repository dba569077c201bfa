// Opens every page of the preview gallery in headless Chromium, the way a
// marketer would, and fails on anything a person would notice: a page that
// does not load, an empty subject, a broken image, a console error.
// Screenshots of a few emails are kept as artifacts.
//
//   node gallery.mjs AFTERCARE_BIN TEMPLATES_DIR WORK_DIR ARTIFACTS_DIR
//
// Prints one JSON line with what it saw; exits 1 on any problem. Everything
// listens on loopback and is stopped before the script ends. With
// BROKEN_LOGO=1 the logo is not served, and the script must notice.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import readline from 'node:readline';

import { launch } from './chromium.mjs';

const [bin, templatesDir, workDir, artifacts] = process.argv.slice(2);
const SCREENSHOTS = ['en/order_confirmation', 'hy/review_request.b', 'am/shipping_update'];
const DEADLINE_MS = 120_000;

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

const browser = await launch();
let pages = 0;
let images = 0;
try {
  const context = await browser.newContext({ viewport: { width: 900, height: 1200 } });
  const index = await context.newPage();
  await index.goto(`${base}/`);
  const links = await index.$$eval('a', (as) => as.map((a) => a.getAttribute('href')));
  if (links.length === 0) problems.push('the index links no page');
  for (const link of links) {
    const page = await context.newPage();
    page.on('console', (m) => m.type() === 'error' && problems.push(`${link}: console: ${m.text()}`));
    page.on('pageerror', (e) => problems.push(`${link}: ${e.message}`));
    const response = await page.goto(`${base}/${link}`, { waitUntil: 'load' });
    if (!response || response.status() !== 200) {
      problems.push(`${link}: HTTP ${response?.status()}`);
      await page.close();
      continue;
    }
    const subject = (await page.textContent('.subject'))?.trim() ?? '';
    if (!subject) problems.push(`${link}: empty subject`);
    const frame = await (await page.$('iframe')).contentFrame();
    await frame.waitForLoadState('load');
    const broken = await frame.$$eval('img', (imgs) =>
      imgs.map((i) => ({ src: i.src, ok: i.complete && i.naturalWidth > 0 })),
    );
    images += broken.length;
    for (const img of broken.filter((i) => !i.ok)) problems.push(`${link}: broken image ${img.src}`);
    const text = (await frame.textContent('body'))?.trim() ?? '';
    if (text.length < 100) problems.push(`${link}: the email shows almost nothing`);
    const name = link.replace(/\.page\.html$/, '');
    if (SCREENSHOTS.includes(name)) {
      const email = await context.newPage();
      await email.goto(`${base}/${name}.html`, { waitUntil: 'load' });
      await email.screenshot({ path: join(artifacts, `${name.replace('/', '-')}.png`), fullPage: true });
      await email.close();
    }
    pages += 1;
    await page.close();
  }
} finally {
  await browser.close();
  preview.kill();
  logoServer.close();
  clearTimeout(timer);
}
console.log(JSON.stringify({ pages, images, problems }));
process.exit(problems.length === 0 ? 0 : 1);
