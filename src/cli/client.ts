/** A small HTTP client for the agentfleet API, used by the CLI's client commands and `load`. */

/** An answer from the server. */
export interface ApiResponse<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
}

/** The server answered with an error status. */
export class ApiRequestError extends Error {
  override readonly name = 'ApiRequestError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(`${code} (HTTP ${status}): ${message}`);
  }
}

/** Where the server is and how to authenticate. */
export interface ClientOptions {
  url: string;
  apiKey?: string | undefined;
}

/** Talks JSON to one agentfleet server. */
export class ApiClient {
  private readonly base: string;

  constructor(private readonly options: ClientOptions) {
    this.base = options.url.replace(/\/+$/, '');
  }

  /** Sends a request and returns the answer whatever its status. Network errors reject. */
  async send<T = unknown>(method: string, path: string, body?: unknown): Promise<ApiResponse<T>> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${this.base}${path}`, {
      method,
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    let parsed: unknown = text;
    if ((response.headers.get('content-type') ?? '').includes('json') && text) parsed = JSON.parse(text);
    return { status: response.status, headers: response.headers, body: parsed as T };
  }

  /** Like `send`, but an error status throws ApiRequestError with the server's code and message. */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await this.send<T>(method, path, body);
    if (response.status >= 400) throw toRequestError(response);
    return response.body;
  }
}

/** The server's `{error: {code, message}}` as an exception. */
export function toRequestError(response: ApiResponse): ApiRequestError {
  const error = (response.body as { error?: { code?: string; message?: string } } | undefined)?.error;
  return new ApiRequestError(
    response.status,
    error?.code ?? 'http_error',
    error?.message ?? (typeof response.body === 'string' ? response.body : 'request failed'),
  );
}
