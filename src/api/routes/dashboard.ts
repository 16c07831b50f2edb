import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { AgentfleetApp } from '../app-types.js';

/**
 * The dashboard's files: a fixed list, so no request path ever reaches the file system. They sit in
 * `src/dashboard/` and are copied to `dist/dashboard/` by the build (scripts/copy-dashboard.mjs); both
 * are `../../dashboard/` from this module.
 */
const FILES: Readonly<Record<string, string>> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

const DIR = new URL('../../dashboard/', import.meta.url);

/** The page talks only to this origin; nothing inline runs. */
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** True for the dashboard's paths, which need no key (the page asks for one; the data needs it). */
export function isDashboardPath(path: string): boolean {
  return path === '/' || path.startsWith('/dashboard/');
}

/** Serves the dashboard at `/` and its assets under `/dashboard/`. */
export function registerDashboardRoutes(app: AgentfleetApp): void {
  const cache = new Map<string, Buffer>();
  const serve = async (name: string): Promise<Buffer | undefined> => {
    if (!Object.hasOwn(FILES, name)) return undefined;
    let body = cache.get(name);
    if (!body) {
      body = await readFile(fileURLToPath(new URL(name, DIR)));
      cache.set(name, body);
    }
    return body;
  };

  app.get('/', { schema: { hide: true } }, async (_request, reply) => {
    const body = await serve('index.html');
    return reply
      .type(FILES['index.html'] ?? 'text/html')
      .header('content-security-policy', CSP)
      .header('cache-control', 'no-cache')
      .send(body);
  });

  app.get<{ Params: { file: string } }>(
    '/dashboard/:file',
    { schema: { hide: true } },
    async (request, reply) => {
      const name = request.params.file;
      const body = await serve(name);
      if (!body) return reply.callNotFound();
      return reply
        .type(FILES[name] ?? 'application/octet-stream')
        .header('cache-control', 'no-cache')
        .header('x-content-type-options', 'nosniff')
        .send(body);
    },
  );
}
