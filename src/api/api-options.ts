/** What the HTTP app needs besides the engine: who may call it, and how big a request may be. */
export interface ApiOptions {
  /** API key → user id. With no keys at all the app runs in local mode as user `local`. */
  readonly apiKeys: Readonly<Record<string, string>>;
  /** Keys that see and manage every user's tasks and agents. */
  readonly adminKeys: readonly string[];
  /** Largest request body; a bigger one gets 413 `payload_too_large`. */
  readonly bodyLimitBytes: number;
  /** Longest task description accepted by the submit schema. */
  readonly maxDescriptionLength: number;
  /** Largest `timeout_ms` a task may ask for. */
  readonly maxTimeoutMs: number;
}

/** True when no keys are configured: the app serves everyone as user `local` (loopback only). */
export function isLocalMode(options: Pick<ApiOptions, 'apiKeys' | 'adminKeys'>): boolean {
  return Object.keys(options.apiKeys).length === 0 && options.adminKeys.length === 0;
}
