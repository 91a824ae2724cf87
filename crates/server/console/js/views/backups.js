// Backups (admin): start an online backup of every collection (a tar file or a
// directory on the server), list the jobs with their state; a running job is followed
// over server-sent events (GET /v1/backups/{id}/events) until it ends.

import { api, describe } from '../api.js';
import { announce, fmt, h, select, showError, table, field } from '../dom.js';
import { follow } from '../sse.js';

function stateCell(b) {
  if (b.state === 'running') {
    const f = typeof b.progress === 'number' ? b.progress : 0;
    return h('span', null, h('progress', { max: '1', value: String(f), 'aria-label': `Backup ${b.id}` }), ` running ${Math.round(f * 100)}%`);
  }
  return h('span', { class: b.state === 'succeeded' ? 'good' : 'bad' }, b.state);
}

export async function render(root) {
  const { backups } = await api('GET', '/v1/backups');
  const list = h('div', { id: 'backup-list', 'aria-live': 'polite' });
  const rows = new Map(backups.map((b) => [b.id, b]));
  const followed = new Set();

  function draw() {
    const sorted = [...rows.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
    list.replaceChildren(
      table('Backup jobs, newest first', [
        { title: 'Id', clip: true, cell: (b) => h('code', null, b.id) },
        { title: 'State', cell: stateCell },
        { title: 'Format', cell: (b) => b.format },
        { title: 'Collections', num: true, cell: (b) => fmt.num(b.collections) },
        { title: 'Bytes', num: true, cell: (b) => fmt.bytes(b.bytes) },
        { title: 'Started', cell: (b) => fmt.time(b.created_at) },
        { title: 'Finished', cell: (b) => fmt.time(b.finished_at) },
        { title: 'Path on the server', clip: true, cell: (b) => h('code', null, b.path) },
        { title: 'Error', clip: true, cell: (b) => b.error || '' },
      ], sorted, (b) => ({ 'data-backup': b.id })),
    );
  }

  function watch(id) {
    if (followed.has(id)) return;
    followed.add(id);
    follow(`/v1/backups/${encodeURIComponent(id)}/events`, {
      view: root,
      until: (e) => e.data && e.data.state !== 'running',
      onEvent: (e) => {
        const b = e.data;
        if (!b || typeof b !== 'object' || b.id !== id) return;
        const was = rows.get(id);
        rows.set(id, b);
        draw();
        if (b.state !== 'running' && (!was || was.state === 'running')) {
          announce(`Backup ${id} ${b.state}${b.bytes ? `: ${fmt.bytes(b.bytes)}` : ''}.`);
        }
      },
    });
  }

  const format = select({ name: 'backup-format' }, [['tar', 'One .tar file'], ['dir', 'A directory']], 'tar');
  const form = h('form', { class: 'inline', 'aria-labelledby': 'start-backup-title' },
    field('Format', format),
    h('button', { type: 'submit' }, 'Start backup'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const b = await api('POST', '/v1/backups', { format: format.value });
      rows.set(b.id, b);
      draw();
      announce(`Backup ${b.id} started.`);
      watch(b.id);
    } catch (e) {
      showError(describe(e));
    }
  });

  draw();
  for (const b of rows.values()) if (b.state === 'running') watch(b.id);
  root.replaceChildren(
    h('h1', null, 'Backups'),
    h('p', { class: 'muted' }, 'An online backup captures every collection at one consistent point while writes continue; restore it with kernelize restore.'),
    h('h2', { id: 'start-backup-title' }, 'Start a backup'),
    form,
    h('h2', null, 'Jobs'),
    list,
  );
}
