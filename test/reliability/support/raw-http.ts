/**
 * A raw HTTP/1.1 client over a TCP socket, for hostile-input tests: it sends exactly the bytes it is
 * given (header values fetch would refuse, bodies that trickle in, bodies cut short) and reads back the
 * status line, the headers and the body.
 */
import { connect } from 'node:net';

/** One raw request. */
export interface RawRequest {
  method: string;
  /** Request target as sent, unencoded by this client. */
  path: string;
  headers: readonly (readonly [string, string])[];
  body?: Buffer;
  /** Send the body in this many pieces, waiting `pieceDelayMs` between them (a slow client). */
  pieces?: number;
  pieceDelayMs?: number;
  /** Close the connection after this many body bytes instead of finishing (a client that gives up). */
  cutAfterBytes?: number;
}

/** What came back; status 0 when the server closed without a response. */
export interface RawReply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Sends one request on a fresh connection (`connection: close`). */
export function rawRequest(url: string, req: RawRequest, timeoutMs = 20_000): Promise<RawReply> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port) });
    const chunks: Buffer[] = [];
    let finished = false;
    const finish = (error?: Error) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) {
        reject(error);
        return;
      }
      resolve(parse(Buffer.concat(chunks)));
    };
    const timer = setTimeout(
      () => finish(new Error(`no complete answer to ${req.method} ${req.path} in ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      // An event stream never ends by itself: its headers are the answer.
      const head = Buffer.concat(chunks).toString('latin1');
      if (/\r\ncontent-type: text\/event-stream/i.test(head) && head.includes('\r\n\r\n')) finish();
    });
    socket.on('end', () => finish());
    socket.on('close', () => finish());
    // A reset after a refused request is an answer of its own (status 0), not a client failure.
    socket.on('error', () => finish());
    socket.on('connect', () => {
      void send().catch(() => finish());
    });

    async function send(): Promise<void> {
      const lines = [`${req.method} ${req.path} HTTP/1.1`, `host: ${hostname}:${port}`, 'connection: close'];
      for (const [name, value] of req.headers) lines.push(`${name}: ${value}`);
      socket.write(Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'));
      const te = req.headers.find(([name]) => name.toLowerCase() === 'transfer-encoding')?.[1] ?? '';
      const chunked = /(^|,)\s*chunked\s*$/i.test(te);
      const raw = req.body ?? Buffer.alloc(0);
      // A chunked body carries its own framing, so the server never waits for bytes that will not come.
      const body = chunked
        ? Buffer.concat([
            Buffer.from(raw.length > 0 ? `${raw.length.toString(16)}\r\n` : ''),
            raw,
            Buffer.from(raw.length > 0 ? '\r\n0\r\n\r\n' : '0\r\n\r\n'),
          ])
        : raw;
      const limit = req.cutAfterBytes ?? body.length;
      const pieces = Math.max(1, req.pieces ?? 1);
      const size = Math.ceil(body.length / pieces) || 1;
      for (let at = 0; at < Math.min(limit, body.length); at += size) {
        if (socket.destroyed) return;
        socket.write(body.subarray(at, Math.min(at + size, limit)));
        // The pause is the slow client itself, not synchronisation.
        if (req.pieceDelayMs) await new Promise((r) => setTimeout(r, req.pieceDelayMs));
      }
      if (req.cutAfterBytes !== undefined) socket.destroy();
    }
  });
}

function parse(all: Buffer): RawReply {
  let raw = all;
  // Interim answers (100 Continue) come before the real one.
  while (/^HTTP\/1\.[01] 1\d\d /.test(raw.subarray(0, 16).toString('latin1'))) {
    const at = raw.indexOf('\r\n\r\n');
    if (at === -1) break;
    raw = raw.subarray(at + 4);
  }
  const end = raw.indexOf('\r\n\r\n');
  const head = (end === -1 ? raw : raw.subarray(0, end)).toString('latin1');
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const at = line.indexOf(':');
    if (at > 0) headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
  }
  let body = end === -1 ? Buffer.alloc(0) : raw.subarray(end + 4);
  if (headers['transfer-encoding'] === 'chunked') body = unchunk(body);
  return { status, headers, body: body.toString('utf8') };
}

/** The payload of a chunked body (as far as it arrived). */
function unchunk(body: Buffer): Buffer {
  const out: Buffer[] = [];
  let rest = body;
  for (;;) {
    const at = rest.indexOf('\r\n');
    if (at === -1) break;
    const size = Number.parseInt(rest.subarray(0, at).toString('latin1'), 16);
    if (!Number.isFinite(size) || size === 0) break;
    out.push(rest.subarray(at + 2, at + 2 + size));
    rest = rest.subarray(at + 2 + size + 2);
  }
  return Buffer.concat(out);
}
