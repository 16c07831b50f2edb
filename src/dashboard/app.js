// agentfleet dashboard: plain ES module, no framework. It reads the REST API with the operator's key and
// stays live through the Server-Sent Events stream at /api/v1/events. All text reaches the DOM through
// textContent, never innerHTML, so task data cannot inject markup.

const KEY_STORAGE = 'agentfleet.apiKey';
const KEY_COOKIE = 'agentfleet_api_key';
const EVENTS_PATH = '/api/v1/events';
const BUCKET_MS = 30_000;
const BUCKETS = 30; // 15 minutes
const TASK_PAGE = 100;
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = {
  key: localStorage.getItem(KEY_STORAGE) ?? '',
  queue: null,
  health: null,
  alerts: { alerts: [], recent: [] },
  /** finished tasks per bucket start (ms): { ok, bad } */
  buckets: new Map(),
  /** tasks already counted in the charts, so a backfill and an event never count one twice */
  counted: new Set(),
  tasks: [],
  types: new Set(),
  selected: null,
  stream: null,
  refreshTimer: null,
  tasksTimer: null,
};

// ---------- small helpers ----------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function pill(value, extra = '') {
  return el('span', { class: `pill ${value} ${extra}`.trim(), text: value.replace('_', '-') });
}

function ago(iso) {
  if (!iso) return '–';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return new Date(iso).toLocaleString();
}

function duration(fromIso, toIso) {
  if (!fromIso) return '–';
  const ms = (toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)}m ${Math.round((ms % 60_000) / 1000)}s`;
}

function pct(ratio) {
  return `${(Math.round(ratio * 1000) / 10).toFixed(1)} %`;
}

function short(id) {
  return id.length > 14 ? `…${id.slice(-10)}` : id;
}

// ---------- API ----------

class HttpError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.body ? { 'content-type': 'application/json' } : {}) };
  if (state.key) headers.authorization = `Bearer ${state.key}`;
  const response = await fetch(path, { ...options, headers });
  const body = response.headers.get('content-type')?.includes('json') ? await response.json() : null;
  if (!response.ok) throw new HttpError(response.status, body);
  return body;
}

function showBanner(text) {
  const banner = $('banner');
  banner.textContent = text ?? '';
  banner.hidden = !text;
}

function handleError(error) {
  if (error instanceof HttpError && error.status === 401) {
    showBanner('This server needs an API key: paste it in the field at the top right and press “Use key”.');
  } else {
    showBanner(`Could not reach agentfleet: ${error.message}`);
  }
}

// ---------- API key ----------

function storeKey(key) {
  state.key = key;
  const secure = location.protocol === 'https:' ? '; Secure' : '';
  if (key) {
    localStorage.setItem(KEY_STORAGE, key);
    // EventSource cannot send headers: the stream (and only the stream) also reads this cookie.
    // biome-ignore lint/suspicious/noDocumentCookie: the Cookie Store API is not in every browser yet
    document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=${EVENTS_PATH}; SameSite=Strict${secure}`;
  } else {
    localStorage.removeItem(KEY_STORAGE);
    // biome-ignore lint/suspicious/noDocumentCookie: the Cookie Store API is not in every browser yet
    document.cookie = `${KEY_COOKIE}=; path=${EVENTS_PATH}; max-age=0; SameSite=Strict${secure}`;
  }
}

// ---------- rendering: cards ----------

function renderQueue() {
  const q = state.queue;
  if (!q) return;
  $('queue-size').textContent = q.queue_size;
  $('queue-capacity').textContent = q.queue_capacity;
  const ratio = q.queue_capacity > 0 ? q.queue_size / q.queue_capacity : 0;
  const meter = $('queue-meter');
  meter.style.width = `${Math.min(100, ratio * 100)}%`;
  meter.className = `meter-fill${ratio >= 1 ? ' bad' : ratio > 0.8 ? ' warn' : ''}`;
  $('queue-mark').style.left = '80%';
  $('queue-foot').textContent = `${pct(ratio)} of capacity · alert above 80 %`;
  $('slots-used').textContent = q.concurrent_tasks;
  $('slots-max').textContent = q.max_concurrent;
  const slots = q.max_concurrent > 0 ? q.concurrent_tasks / q.max_concurrent : 0;
  $('slots-meter').style.width = `${Math.min(100, slots * 100)}%`;
  $('slots-foot').textContent = `${pct(slots)} busy`;
  renderBreakers();
}

function renderBreakers() {
  const box = $('breakers');
  const states = { ...(state.queue?.circuit_breakers ?? {}) };
  for (const type of state.types) states[type] ??= 'closed';
  const types = Object.keys(states).sort();
  box.replaceChildren(
    ...(types.length === 0
      ? [el('div', { class: 'empty', text: 'No task type has run yet.' })]
      : types.map((type) =>
          el(
            'div',
            { class: 'breaker', 'data-breaker': type, 'data-state': states[type] },
            el('span', { class: 'b-type', text: type, title: type }),
            pill(states[type]),
          ),
        )),
  );
}

function renderHealth() {
  const h = state.health;
  if (!h) return;
  const agents = h.agents ?? [];
  const unhealthy = agents.filter((a) => a.status === 'unhealthy').length;
  $('agents-total').textContent = agents.length;
  $('agents-foot').textContent =
    `${h.unhealthy_agents} unhealthy${agents.length ? ` · ${pct(unhealthy / agents.length)}` : ''}`;
  $('agents-hint').textContent = `${agents.length} not retired`;
  const order = { unhealthy: 0, busy: 1, idle: 2, retired: 3 };
  const rows = [...agents].sort((a, b) => order[a.status] - order[b.status] || a.name.localeCompare(b.name));
  $('agents')
    .querySelector('tbody')
    .replaceChildren(
      ...rows.map((a) =>
        el(
          'tr',
          { 'data-agent-id': a.id },
          el('td', { class: 'id', text: a.name, title: a.id }),
          el('td', { text: a.agent_type }),
          el('td', {}, pill(a.status)),
          el('td', { class: 'num', text: a.health.total_executions }),
          el('td', { class: 'num', text: a.health.successful_executions }),
          el('td', { class: 'num', text: a.health.consecutive_failures }),
        ),
      ),
    );
  if (rows.length === 0) {
    $('agents')
      .querySelector('tbody')
      .append(
        el(
          'tr',
          {},
          el('td', { colspan: 6, class: 'empty', text: 'Agents are created when tasks need them.' }),
        ),
      );
  }
}

function renderAlerts() {
  const { alerts, recent } = state.alerts;
  const count = $('alerts-count');
  count.textContent = alerts.length ? `${alerts.length} firing` : 'none firing';
  count.className = `count${alerts.length ? ' firing' : ''}`;
  const item = (a) =>
    el(
      'li',
      { class: `alert ${a.severity} ${a.state}`, 'data-alert': a.name, 'data-state': a.state },
      el(
        'div',
        { class: 'a-head' },
        el('span', { class: 'a-name', text: a.name }),
        pill(
          a.state === 'firing' ? a.severity : 'resolved',
          a.state === 'firing' ? (a.severity === 'critical' ? 'failed' : 'high') : 'succeeded',
        ),
        el('span', {
          class: 'a-time',
          text: a.state === 'firing' ? `fired ${ago(a.fired_at)}` : `resolved ${ago(a.resolved_at)}`,
          title: a.fired_at,
        }),
      ),
      el('div', { class: 'a-msg', text: a.message }),
    );
  const list = [...alerts.map(item), ...recent.slice(0, 5).map(item)];
  $('alerts').replaceChildren(
    ...(list.length ? list : [el('li', { class: 'empty', text: 'All quiet: no alert has fired.' })]),
  );
}

// ---------- charts ----------

function bucketOf(ms) {
  return Math.floor(ms / BUCKET_MS) * BUCKET_MS;
}

function countFinished(taskId, status, atIso) {
  if (status !== 'succeeded' && status !== 'failed') return;
  if (!taskId || state.counted.has(taskId)) return;
  const at = Date.parse(atIso);
  if (!(at > Date.now() - BUCKETS * BUCKET_MS)) return;
  state.counted.add(taskId);
  const key = bucketOf(at);
  const bucket = state.buckets.get(key) ?? { ok: 0, bad: 0 };
  if (status === 'succeeded') bucket.ok++;
  else bucket.bad++;
  state.buckets.set(key, bucket);
}

function series() {
  const end = bucketOf(Date.now());
  const out = [];
  for (let i = BUCKETS - 1; i >= 0; i--) {
    const start = end - i * BUCKET_MS;
    out.push({ start, ...(state.buckets.get(start) ?? { ok: 0, bad: 0 }) });
  }
  for (const key of state.buckets.keys()) if (key < end - BUCKETS * BUCKET_MS) state.buckets.delete(key);
  return out;
}

function chartFrame(box, maxLabel, minLabel) {
  const width = Math.max(200, box.clientWidth);
  const height = Math.max(100, box.clientHeight);
  const pad = { l: 34, r: 6, t: 6, b: 16 };
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none' });
  const plot = { x: pad.l, y: pad.t, w: width - pad.l - pad.r, h: height - pad.t - pad.b };
  for (const f of [0, 0.5, 1]) {
    const y = plot.y + plot.h * f;
    root.append(svg('line', { x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y, class: 'grid' }));
  }
  const label = (text, x, y, anchor) => {
    const t = svg('text', { x, y, 'text-anchor': anchor, class: 'axis' });
    t.textContent = text;
    root.append(t);
  };
  label(maxLabel, plot.x - 4, plot.y + 8, 'end');
  label(minLabel, plot.x - 4, plot.y + plot.h, 'end');
  for (const [text, f] of [
    ['−15m', 0],
    ['−10m', 1 / 3],
    ['−5m', 2 / 3],
    ['now', 1],
  ]) {
    label(text, plot.x + plot.w * f, height - 3, f === 0 ? 'start' : f === 1 ? 'end' : 'middle');
  }
  box.replaceChildren(root);
  return { root, plot };
}

function renderCharts() {
  const data = series();
  const total = data.reduce((n, b) => n + b.ok + b.bad, 0);
  const ok = data.reduce((n, b) => n + b.ok, 0);
  const last = data.slice(-2).reduce((n, b) => n + b.ok + b.bad, 0);
  $('rate-15').textContent = total ? pct(ok / total) : '–';
  $('rate-foot').textContent = total ? `${ok} of ${total} finished tasks succeeded` : 'no task finished yet';
  $('tput-1').textContent = `${last}/min`;
  $('tput-foot').textContent = `${total} finished in 15 min`;

  const max = Math.max(1, ...data.map((b) => b.ok + b.bad));
  const t = chartFrame($('chart-throughput'), String(max), '0');
  const step = t.plot.w / data.length;
  data.forEach((b, i) => {
    const x = t.plot.x + i * step + 1;
    const w = Math.max(1, step - 2);
    const hOk = (b.ok / max) * t.plot.h;
    const hBad = (b.bad / max) * t.plot.h;
    const base = t.plot.y + t.plot.h;
    if (b.ok) t.root.append(svg('rect', { x, y: base - hOk, width: w, height: hOk, fill: '#1f9d55', rx: 1 }));
    if (b.bad)
      t.root.append(svg('rect', { x, y: base - hOk - hBad, width: w, height: hBad, fill: '#d13c3c', rx: 1 }));
  });

  const s = chartFrame($('chart-success'), '100 %', '0 %');
  const yOf = (r) => s.plot.y + s.plot.h * (1 - r);
  s.root.append(
    svg('line', {
      x1: s.plot.x,
      x2: s.plot.x + s.plot.w,
      y1: yOf(0.9),
      y2: yOf(0.9),
      stroke: '#c77c02',
      'stroke-dasharray': '4 3',
    }),
  );
  const points = data
    .map((b, i) => ({ i, n: b.ok + b.bad, r: b.ok + b.bad ? b.ok / (b.ok + b.bad) : null }))
    .filter((p) => p.r !== null)
    .map((p) => ({ ...p, x: s.plot.x + (p.i + 0.5) * step, y: yOf(p.r) }));
  if (points.length > 1) {
    s.root.append(
      svg('polyline', {
        points: points.map((p) => `${p.x},${p.y}`).join(' '),
        fill: 'none',
        stroke: '#2f6fde',
        'stroke-width': 2,
      }),
    );
  }
  for (const p of points) {
    s.root.append(svg('circle', { cx: p.x, cy: p.y, r: 2.5, fill: p.r < 0.9 ? '#d13c3c' : '#2f6fde' }));
  }
}

// ---------- tasks ----------

function filters() {
  return { status: $('f-status').value, task_type: $('f-type').value, priority: $('f-priority').value };
}

function matches(task) {
  const f = filters();
  return (
    (!f.status || task.status === f.status) &&
    (!f.task_type || task.task_type === f.task_type) &&
    (!f.priority || task.priority === f.priority)
  );
}

function noteType(type) {
  if (!type || state.types.has(type)) return;
  state.types.add(type);
  const select = $('f-type');
  const current = select.value;
  const names = [...state.types].sort();
  select.replaceChildren(
    el('option', { value: '', text: 'any type' }),
    ...names.map((n) => el('option', { value: n, text: n })),
  );
  select.value = current;
}

function taskRow(task) {
  return el(
    'tr',
    {
      'data-task-id': task.id,
      'data-status': task.status,
      class: state.selected === task.id ? 'selected' : undefined,
      onclick: () => selectTask(task.id),
    },
    el('td', { class: 'id', text: short(task.id), title: task.id }),
    el('td', { text: task.task_type }),
    el('td', {}, pill(task.priority)),
    el('td', { class: 'status' }, pill(task.status)),
    el('td', { class: 'num', text: `${task.attempts}/${task.max_retries + 1}` }),
    el('td', { text: ago(task.created_at), title: task.created_at }),
    el('td', { class: 'num', text: task.started_at ? duration(task.started_at, task.finished_at) : '–' }),
    el('td', { text: task.description, title: task.description }),
  );
}

function renderTasks() {
  const rows = state.tasks.filter(matches);
  const body = $('tasks').querySelector('tbody');
  body.replaceChildren(...rows.map(taskRow));
  if (rows.length === 0)
    body.append(el('tr', {}, el('td', { colspan: 8, class: 'empty', text: 'No task matches.' })));
  $('tasks-hint').textContent = `${rows.length} shown · newest first`;
}

async function loadTasks() {
  const f = filters();
  const query = new URLSearchParams({ limit: String(TASK_PAGE) });
  for (const [k, v] of Object.entries(f)) if (v) query.set(k, v);
  const page = await api(`/api/v1/agents/tasks?${query}`);
  state.tasks = page.tasks;
  for (const t of page.tasks) noteType(t.task_type);
  renderTasks();
}

/** Fills the charts with tasks that finished in the last 15 minutes (the newest 500 submissions). */
async function backfill() {
  const page = await api('/api/v1/agents/tasks?limit=500');
  for (const t of page.tasks) {
    noteType(t.task_type);
    countFinished(t.id, t.status, t.finished_at);
  }
  renderCharts();
  renderBreakers();
}

function upsertTask(task) {
  noteType(task.task_type);
  const i = state.tasks.findIndex((t) => t.id === task.id);
  if (i >= 0) state.tasks[i] = task;
  else state.tasks.unshift(task);
  if (state.tasks.length > TASK_PAGE * 2) state.tasks.length = TASK_PAGE * 2;
  const body = $('tasks').querySelector('tbody');
  const old = body.querySelector(`tr[data-task-id="${CSS.escape(task.id)}"]`);
  if (!matches(task)) {
    old?.remove();
    return;
  }
  const row = taskRow(task);
  row.classList.add('flash');
  if (old) old.replaceWith(row);
  else {
    body.querySelector('td.empty')?.parentElement?.remove();
    body.prepend(row);
  }
}

// ---------- task view ----------

function jsonBlock(value, cls = '') {
  return el('pre', {
    class: `json ${cls}`.trim(),
    text: value === null || value === undefined ? 'null' : JSON.stringify(value, null, 2),
  });
}

async function selectTask(id) {
  state.selected = id;
  for (const row of $('tasks').querySelectorAll('tbody tr'))
    row.classList.toggle('selected', row.dataset.taskId === id);
  await renderDetail();
}

async function renderDetail() {
  const id = state.selected;
  const panel = $('detail');
  if (!id) {
    panel.hidden = true;
    return;
  }
  let task;
  try {
    task = await api(`/api/v1/agents/tasks/${encodeURIComponent(id)}`);
  } catch (error) {
    handleError(error);
    return;
  }
  if (state.selected !== id) return;
  panel.hidden = false;
  panel.dataset.taskId = id;
  panel.dataset.status = task.status;
  $('detail-title').replaceChildren('Task ', pill(task.status));
  $('detail-cancel').disabled = !(task.status === 'queued' || task.status === 'running');
  $('detail-retry').disabled = task.status !== 'failed';
  const kv = (pairs) =>
    el(
      'dl',
      { class: 'kv' },
      ...pairs.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v ?? '–' })]),
    );
  const attempts = task.attempt_history ?? [];
  $('detail-body').replaceChildren(
    kv([
      ['id', task.id],
      ['type', task.task_type],
      ['priority', task.priority],
      ['description', task.description],
      ['attempts', `${task.attempts} of ${task.max_retries + 1}`],
      ['agent', task.agent_id],
      ['created', `${task.created_at} (${ago(task.created_at)})`],
      ['started', task.started_at],
      ['finished', task.finished_at],
      ['run at', task.run_at],
      ['owner', task.user_id],
    ]),
    el('h3', { text: `Attempts (${attempts.length})` }),
    attempts.length
      ? el(
          'table',
          { class: 'dense' },
          el(
            'thead',
            {},
            el(
              'tr',
              {},
              ...['#', 'Agent', 'Started', 'Took', 'Outcome', 'Error'].map((h) => el('th', { text: h })),
            ),
          ),
          el(
            'tbody',
            {},
            ...attempts.map((a) =>
              el(
                'tr',
                {},
                el('td', { text: a.attempt }),
                el('td', {
                  class: 'id',
                  text: a.agent_id ? short(a.agent_id) : '–',
                  title: a.agent_id ?? '',
                }),
                el('td', { text: ago(a.started_at), title: a.started_at }),
                el('td', { class: 'num', text: duration(a.started_at, a.finished_at) }),
                el(
                  'td',
                  {},
                  pill(a.outcome === 'lost' ? 'failed' : a.outcome === 'released' ? 'queued' : a.outcome),
                ),
                el('td', { text: a.error ?? '', title: a.error ?? '' }),
              ),
            ),
          ),
        )
      : el('div', { class: 'empty', text: 'Not started yet.' }),
    ...(task.error
      ? [el('h3', { text: 'Error' }), el('pre', { class: 'json error', text: task.error })]
      : []),
    el('h3', { text: 'Checkpoint' }),
    jsonBlock(task.checkpoint),
    el('h3', { text: 'Result' }),
    jsonBlock(task.result),
    el('h3', { text: 'Input' }),
    jsonBlock(task.input),
  );
}

async function act(path) {
  try {
    const task = await api(path, { method: 'POST' });
    upsertTask(task);
    await renderDetail();
  } catch (error) {
    handleError(error);
  }
}

// ---------- live ----------

const STATUS_BY_EVENT = {
  'task.queued': 'queued',
  'task.started': 'running',
  'task.retrying': 'queued',
  'task.released': 'queued',
  'task.succeeded': 'succeeded',
  'task.failed': 'failed',
  'task.cancelled': 'cancelled',
};

function logEvent(event) {
  const list = $('events');
  const tone = /failed|opened|unhealthy|alert\.fired|retired/.test(event.type)
    ? 'bad'
    : /succeeded|closed|resolved/.test(event.type)
      ? 'ok'
      : '';
  const subject = event.task_id ?? event.agent_id ?? event.task_type ?? '';
  const extra = event.type.startsWith('alert.')
    ? event.data?.message
    : (event.data?.error ?? event.task_type ?? '');
  list.prepend(
    el(
      'li',
      {},
      el('span', { class: 'e-time', text: new Date(event.at).toLocaleTimeString() }),
      el('span', { class: `e-type ${tone}`, text: event.type }),
      el('span', { class: 'e-rest', text: `${subject} ${extra && extra !== subject ? `· ${extra}` : ''}` }),
    ),
  );
  while (list.children.length > 200) list.lastElementChild.remove();
}

/** Tasks whose row is being fetched, each with whether an event about it came in meanwhile. */
const fetching = new Map();

/**
 * Fetches a new task whole, so its row shows the description. The reply may be older than an event
 * that arrives while it is on the way (a short task can start and finish in the meantime, and an
 * event about a task not yet in the table has nothing to update), so it asks again until no event came
 * in during a request.
 */
function fetchTask(id) {
  fetching.set(id, false);
  api(`/api/v1/agents/tasks/${encodeURIComponent(id)}`).then(
    (task) => {
      const changed = fetching.get(id);
      fetching.delete(id);
      upsertTask(task);
      if (changed) fetchTask(id);
    },
    () => fetching.delete(id),
  );
}

function onEvent(event) {
  logEvent(event);
  noteType(event.task_type);
  if (event.type.startsWith('task.') && event.task_id) {
    countFinished(event.task_id, STATUS_BY_EVENT[event.type], event.at);
    const known = state.tasks.find((t) => t.id === event.task_id);
    const status = event.type === 'task.reclaimed' ? event.data?.status : STATUS_BY_EVENT[event.type];
    if (known && status) {
      upsertTask({
        ...known,
        status,
        ...(event.type === 'task.started'
          ? { started_at: event.at, attempts: event.data?.attempt ?? known.attempts }
          : {}),
        ...(status === 'succeeded' || status === 'failed' || status === 'cancelled'
          ? { finished_at: event.at }
          : {}),
      });
    }
    if (fetching.has(event.task_id)) fetching.set(event.task_id, true);
    else if (!known && event.type === 'task.queued') fetchTask(event.task_id);
    if (event.task_id === state.selected) scheduleDetail();
    if (event.type === 'task.succeeded' || event.type === 'task.failed') renderCharts();
  }
  if (event.type.startsWith('breaker.') && event.task_type && state.queue) {
    state.queue.circuit_breakers = {
      ...state.queue.circuit_breakers,
      [event.task_type]: event.data?.to ?? 'open',
    };
    renderBreakers();
  }
  if (event.type.startsWith('alert.') && event.data) {
    const alert = event.data;
    const active = state.alerts.alerts.filter((a) => a.name !== alert.name);
    if (event.type === 'alert.fired') active.push(alert);
    const recent = event.type === 'alert.resolved' ? [alert, ...state.alerts.recent] : state.alerts.recent;
    state.alerts = { alerts: active, recent };
    renderAlerts();
  }
  scheduleRefresh();
}

let detailTimer = null;
function scheduleDetail() {
  clearTimeout(detailTimer);
  detailTimer = setTimeout(() => renderDetail(), 150);
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    void refreshStatus();
  }, 400);
}

function connect() {
  state.stream?.close();
  const conn = $('conn');
  conn.dataset.state = 'connecting';
  $('conn-text').textContent = 'connecting';
  const stream = new EventSource(EVENTS_PATH);
  state.stream = stream;
  stream.onopen = () => {
    conn.dataset.state = 'live';
    $('conn-text').textContent = 'live';
    // Nothing is replayed after a reconnect: read the current state again.
    void refreshAll();
  };
  stream.onmessage = (message) => {
    try {
      onEvent(JSON.parse(message.data));
    } catch (error) {
      console.error('bad event', error);
    }
  };
  stream.onerror = () => {
    conn.dataset.state = 'error';
    $('conn-text').textContent = stream.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting';
    if (stream.readyState === EventSource.CLOSED) {
      // Refused (a wrong key, say): the REST call shows why in the banner; try the stream again later.
      void refreshStatus();
      setTimeout(() => state.stream === stream && connect(), 3000);
    }
  };
}

// ---------- refresh ----------

async function refreshStatus() {
  try {
    const [queue, health, alerts] = await Promise.all([
      api('/api/v1/agents/queue/status'),
      api('/api/v1/agents/health'),
      api('/api/v1/agents/alerts'),
    ]);
    state.queue = queue;
    state.health = health;
    state.alerts = alerts;
    showBanner('');
    renderQueue();
    renderHealth();
    renderAlerts();
    renderCharts();
  } catch (error) {
    handleError(error);
  }
}

async function refreshAll() {
  try {
    await Promise.all([refreshStatus(), loadTasks(), backfill()]);
    $('who').textContent = state.key ? 'using API key' : 'no key (local mode)';
  } catch (error) {
    handleError(error);
  }
}

// ---------- start ----------

function start() {
  $('api-key').value = state.key;
  storeKey(state.key);
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    storeKey($('api-key').value.trim());
    state.buckets.clear();
    state.counted.clear();
    state.selected = null;
    $('detail').hidden = true;
    connect();
  });
  $('key-clear').addEventListener('click', () => {
    $('api-key').value = '';
    storeKey('');
    connect();
  });
  for (const id of ['f-status', 'f-type', 'f-priority']) {
    $(id).addEventListener('change', () => loadTasks().catch(handleError));
  }
  $('detail-close').addEventListener('click', () => {
    state.selected = null;
    $('detail').hidden = true;
    renderTasks();
  });
  $('detail-cancel').addEventListener('click', () =>
    act(`/api/v1/agents/tasks/${encodeURIComponent(state.selected)}/cancel`),
  );
  $('detail-retry').addEventListener('click', () =>
    act(`/api/v1/agents/tasks/${encodeURIComponent(state.selected)}/retry`),
  );
  // Ages and the chart's time axis move even when nothing happens; a slow poll also covers a lost stream.
  setInterval(() => {
    renderCharts();
    renderAlerts();
    void refreshStatus();
  }, 5000);
  window.addEventListener('resize', () => renderCharts());
  renderCharts();
  connect();
}

start();
