// Copies the dashboard's static files (src/dashboard) next to the compiled server (dist/dashboard), where
// src/api/routes/dashboard.ts looks for them at run time. Part of `npm run build`.
import { cpSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const from = fileURLToPath(new URL('../src/dashboard/', import.meta.url));
const to = fileURLToPath(new URL('../dist/dashboard/', import.meta.url));
rmSync(to, { recursive: true, force: true });
cpSync(from, to, { recursive: true });
console.log('dashboard copied to dist/dashboard');
