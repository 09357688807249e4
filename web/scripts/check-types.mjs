// Checks that the committed web/wsp.d.ts is what `npm run build:types`
// would generate from web/wsp.js now: regenerates it into a temporary
// folder and compares. Run by `npm run check`.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const out = mkdtempSync(join(tmpdir(), 'wsp-types-'));
try {
  const r = spawnSync(process.execPath, [
    tsc, '-p', join(root, 'tsconfig.json'),
    '--noEmit', 'false', '--declaration', '--emitDeclarationOnly', '--outDir', out,
  ], { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error('check-types: tsc failed');
    process.exit(1);
  }
  const fresh = readFileSync(join(out, 'wsp.d.ts'), 'utf8');
  let committed = '';
  try {
    committed = readFileSync(join(root, 'web', 'wsp.d.ts'), 'utf8');
  } catch {
    // missing: reported below
  }
  if (fresh !== committed) {
    console.error('check-types: web/wsp.d.ts is out of date; run `npm run build:types`');
    process.exit(1);
  }
  console.log('check-types: web/wsp.d.ts is up to date');
} finally {
  rmSync(out, { recursive: true, force: true });
}
