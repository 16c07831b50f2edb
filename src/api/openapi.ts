/**
 * An OpenAPI 3.1 document built from the routes' own TypeBox schemas (which are JSON Schema), so the
 * documentation cannot drift from what the server validates. Small enough that @fastify/swagger is
 * not worth a dependency.
 */
import type { RouteOptions } from 'fastify';

interface RouteSchema {
  summary?: string;
  description?: string;
  tags?: string[];
  hide?: boolean;
  body?: unknown;
  querystring?: JsonObject;
  params?: JsonObject;
  headers?: JsonObject;
  response?: Record<string, unknown>;
}

interface JsonObject {
  properties?: Record<string, unknown>;
  required?: string[];
}

/** Drops TypeBox's symbol keys and `undefined`s: what remains is plain JSON Schema. */
function plain(schema: unknown): unknown {
  return schema === undefined ? undefined : JSON.parse(JSON.stringify(schema));
}

function parameters(where: 'path' | 'query' | 'header', schema: JsonObject | undefined): unknown[] {
  const required = new Set(schema?.required ?? []);
  return Object.entries(schema?.properties ?? {}).map(([name, s]) => ({
    name,
    in: where,
    required: where === 'path' || required.has(name),
    schema: plain(s),
  }));
}

/** Collects routes as they are added (register it before any route) and renders the document. */
export class OpenApiCollector {
  private readonly routes: RouteOptions[] = [];

  constructor(private readonly info: { title: string; version: string; description: string }) {}

  /** The `onRoute` hook. */
  readonly onRoute = (route: RouteOptions): void => {
    this.routes.push(route);
  };

  /** The OpenAPI document. */
  document(): Record<string, unknown> {
    const paths: Record<string, Record<string, unknown>> = {};
    for (const route of this.routes) {
      const schema = route.schema as RouteSchema | undefined;
      if (!schema || schema.hide) continue;
      const path = route.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
      const methods = (Array.isArray(route.method) ? route.method : [route.method]).filter(
        (m) => m !== 'HEAD',
      );
      for (const method of methods) {
        const responses: Record<string, unknown> = {};
        for (const [status, s] of Object.entries(schema.response ?? {})) {
          const described = s as { description?: string };
          responses[status] = {
            description: described.description ?? (status.startsWith('2') ? 'success' : 'error'),
            content: { 'application/json': { schema: plain(s) } },
          };
        }
        const operation: Record<string, unknown> = {
          summary: schema.summary,
          description: schema.description,
          tags: schema.tags,
          parameters: [
            ...parameters('path', schema.params),
            ...parameters('query', schema.querystring),
            ...parameters('header', schema.headers),
          ],
          responses,
        };
        if (schema.body) {
          operation.requestBody = {
            required: true,
            content: { 'application/json': { schema: plain(schema.body) } },
          };
        }
        if (route.url.startsWith('/api/')) operation.security = [{ bearer: [] }];
        paths[path] = { ...paths[path], [method.toLowerCase()]: operation };
      }
    }
    return {
      openapi: '3.1.0',
      info: this.info,
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      paths,
    };
  }
}

const escapeHtml = (text: string): string =>
  text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c] ?? c);

/** A small, dependency-free page listing every operation with its parameters and body schema. */
export function renderDocsPage(document: Record<string, unknown>): string {
  const info = document.info as { title: string; version: string; description: string };
  const paths = document.paths as Record<string, Record<string, Record<string, unknown>>>;
  const sections: string[] = [];
  for (const [path, operations] of Object.entries(paths)) {
    for (const [method, op] of Object.entries(operations)) {
      const params = (op.parameters as { name: string; in: string; required: boolean }[])
        .map((p) => `<li><code>${escapeHtml(p.name)}</code> (${p.in}${p.required ? ', required' : ''})</li>`)
        .join('');
      const body = op.requestBody
        ? `<details><summary>request body</summary><pre>${escapeHtml(
            JSON.stringify(
              (op.requestBody as { content: Record<string, unknown> }).content['application/json'],
              null,
              2,
            ),
          )}</pre></details>`
        : '';
      const statuses = Object.keys(op.responses as object).join(', ');
      sections.push(
        `<section><h3><span class="m">${method.toUpperCase()}</span> <code>${escapeHtml(path)}</code></h3>` +
          `<p>${escapeHtml(String(op.summary ?? ''))}</p>${params ? `<ul>${params}</ul>` : ''}${body}` +
          `<p class="s">responses: ${escapeHtml(statuses)}</p></section>`,
      );
    }
  }
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(info.title)} API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
section{border-top:1px solid #ddd;padding:.5rem 0}.m{display:inline-block;min-width:4.5rem;font-weight:700}
code,pre{font-family:ui-monospace,monospace}pre{background:#f6f6f6;padding:.5rem;overflow:auto}.s{color:#666}</style>
</head><body><h1>${escapeHtml(info.title)} ${escapeHtml(info.version)}</h1><p>${escapeHtml(info.description)}</p>
<p>Machine-readable: <a href="/docs/json">/docs/json</a> (OpenAPI 3.1). Authenticate with
<code>Authorization: Bearer &lt;api key&gt;</code>; errors are <code>{"error":{"code","message"}}</code>.</p>
${sections.join('\n')}</body></html>`;
}
