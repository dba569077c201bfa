// Opens the retention report's HTML page in headless Chromium and checks
// what a reader would: the page loads from disk with no console error, and
// each chart is drawn with a visible size, and so is each cell of the
// cohort heat map that has a rate (a background colour that is not
// transparent, and a size). Keeps a screenshot.
//
//   node report.mjs REPORT.html SCREENSHOT.png
//
// Prints one JSON line; exits 1 on any problem.

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';

import { launch } from './chromium.mjs';

const [page, shot] = process.argv.slice(2);
const problems = [];
const timer = setTimeout(() => {
  console.error('report browser test: over its time limit');
  process.exit(1);
}, 60_000);

const browser = await launch();
let charts = 0;
let holdoutRows = 0;
let heatCells = 0;
try {
  const tab = await browser.newPage({ viewport: { width: 1000, height: 1400 } });
  tab.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  tab.on('pageerror', (e) => problems.push(e.message));
  tab.on('request', (r) => {
    if (!r.url().startsWith('file:')) problems.push(`fetched ${r.url()}`);
  });
  await tab.goto(pathToFileURL(page).href, { waitUntil: 'load' });
  const sizes = await tab.$$eval('figure.chart svg', (svgs) =>
    svgs.map((s) => {
      const box = s.getBoundingClientRect();
      return { width: box.width, height: box.height, shapes: s.querySelectorAll('rect, path, line, polyline, text').length };
    }),
  );
  for (const [i, size] of sizes.entries()) {
    if (size.width < 100 || size.height < 60) problems.push(`chart ${i} is ${size.width}x${size.height}`);
    else if (size.shapes < 3) problems.push(`chart ${i} draws nothing`);
    else charts += 1;
  }
  // The holdout table's rows (its header included), drawn with a size.
  holdoutRows = await tab.$$eval('table#holdouts tr', (rows) =>
    rows.filter((r) => r.getBoundingClientRect().height > 0 && r.getBoundingClientRect().width > 0).length,
  );
  const cells = await tab.$$eval('table.cohorts td[data-rate]', (tds) =>
    tds.map((td) => {
      const box = td.getBoundingClientRect();
      const background = getComputedStyle(td).backgroundColor;
      const alpha = background.startsWith('rgba') ? Number(background.split(',')[3].replace(')', '')) : 1;
      return { width: box.width, height: box.height, background, alpha };
    }),
  );
  for (const [i, cell] of cells.entries()) {
    if (cell.width < 10 || cell.height < 10) problems.push(`heat map cell ${i} is ${cell.width}x${cell.height}`);
    else if (cell.background === 'transparent' || !(cell.alpha > 0)) problems.push(`heat map cell ${i} has no colour`);
    else heatCells += 1;
  }
  mkdirSync(dirname(shot), { recursive: true });
  await tab.screenshot({ path: shot, fullPage: true });
} finally {
  await browser.close();
  clearTimeout(timer);
}
console.log(JSON.stringify({ charts, holdoutRows, heat_cells: heatCells, problems }));
process.exit(problems.length === 0 ? 0 : 1);
