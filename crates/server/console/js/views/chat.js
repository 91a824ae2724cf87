// Chat with the local model grounded in a kernel (keys of all collections): pick a built
// kernel (each named with its collection) and a RetrieveThenAnswer program, ask; each
// question is one run of the program (POST /v1/programs/{name}/run, the program's
// retriever mapped to the kernel), answered with citations to the retrieved ids. Turns
// are independent (the program answers one question from its passages); the log lives in
// this page only. Writers can register the default chat program when there is none.
// Route: #/chat?kernel={id}&program={name}.

import { api, describe } from '../api.js';
import { announce, field, fmt, h, select, showError } from '../dom.js';
import { programCan, retrieverNames } from './programs.js';

/** The program "Create the chat program" registers. */
export const CHAT_PROGRAM = {
  module: 'retrieve_then_answer',
  retriever: 'kernel',
  mode: 'vector',
  k: 3,
  query_field: 'question',
  answer: {
    name: 'answer',
    signature: {
      instruction: 'Answer the question in one sentence from the passages. Cite the ids of the passages the answer rests on.',
      inputs: [
        { name: 'question', type: 'string' },
        { name: 'passages', type: 'list', items: { type: 'string' }, desc: 'each starts with its [id]' },
        { name: 'passage_ids', type: 'list', items: { type: 'string' } },
      ],
      outputs: [
        { name: 'answer', type: 'string' },
        { name: 'citations', type: 'list', items: { type: 'enum', labels: [], from_input: 'passage_ids' }, max_items: 3, desc: 'ids of the passages the answer rests on' },
      ],
    },
    sampling: { max_tokens: 96 },
  },
};

/** The RetrieveThenAnswer programs (at most the first 50 by name), with their info. */
async function chatPrograms() {
  const { programs } = await api('GET', '/v1/programs');
  const infos = await Promise.all(programs.slice(0, 50).map((p) => api('GET', `/v1/programs/${encodeURIComponent(p.name)}`).catch(() => null)));
  return infos.filter((i) => i && i.program.module === 'retrieve_then_answer');
}

let turns = 0;

function turn(question, r, kernelLabel) {
  turns += 1;
  const n = turns;
  const cited = Array.isArray(r.outputs.citations) ? r.outputs.citations : [];
  const passages = new Map(r.retrieved.map((p) => [p.id, p]));
  const passageId = (id) => `chat-${n}-passage-${r.retrieved.findIndex((p) => p.id === id)}`;
  const calls = r.calls;
  const tokensIn = calls.reduce((a, c) => a + c.prompt_tokens, 0);
  const tokensOut = calls.reduce((a, c) => a + c.completion_tokens, 0);
  return h('li', { class: 'turn', id: `chat-turn-${n}` },
    h('p', { class: 'question' }, h('strong', null, 'You: '), question),
    h('p', { class: 'answer' }, h('strong', null, 'Model: '), String(r.outputs.answer ?? '')),
    h('p', { class: 'citations' }, h('strong', null, 'Cites: '),
      cited.length === 0 ? h('span', { class: 'muted' }, 'no passage') :
        cited.map((id) => {
          const b = h('button', { type: 'button', class: 'citation secondary', 'data-id': id, title: `Show passage ${id}` }, `[${id}]`);
          b.addEventListener('click', () => {
            const el = document.getElementById(passageId(id));
            if (el) {
              el.closest('details').open = true;
              el.focus();
            }
          });
          return b;
        })),
    h('details', { class: 'passages' },
      h('summary', null, `${r.retrieved.length} passage${r.retrieved.length === 1 ? '' : 's'} retrieved from ${kernelLabel}`),
      h('ol', null, r.retrieved.map((p, i) => h('li', { id: `chat-${n}-passage-${i}`, tabindex: '-1', class: cited.includes(p.id) ? 'cited' : null },
        h('code', null, p.id), ` (score ${p.score.toFixed(3)}${cited.includes(p.id) ? ', cited' : ''}): `, fmt.clip(p.text, 400))))),
    h('p', { class: 'muted meta' }, `${calls.map((c) => c.backend).join(', ') || 'no call'} · ${fmt.num(tokensIn)} tokens in, ${fmt.num(tokensOut)} out · ${fmt.ms(r.latency_ms)}${calls.some((c) => c.cache_hit) ? ' · from the response cache' : ''}`),
    passages.size === 0 ? h('p', { class: 'muted' }, 'The kernel returned no passage.') : null);
}

export async function render(root, { query, rerender }) {
  if (!programCan.read()) {
    root.replaceChildren(h('h1', null, 'Chat'), h('p', null, 'Chat runs a server-wide program: it needs a key scoped to all collections.'));
    return;
  }
  const [kernelsResp, programs] = await Promise.all([api('GET', '/v1/kernels'), chatPrograms()]);
  const kernels = kernelsResp.kernels.filter((k) => k.state === 'succeeded' && !k.orphaned);
  const parts = [
    h('h1', null, 'Chat'),
    h('p', { class: 'muted' }, 'Ask the local model a question; a RetrieveThenAnswer program retrieves passages from the kernel and answers with citations to their ids. Each question is answered on its own.'),
  ];
  if (kernels.length === 0) {
    parts.push(h('p', { class: 'notice' }, 'There is no built kernel to ground answers in. ', h('a', { href: '#/kernels' }, 'Build one'), ' first.'));
  }
  if (programs.length === 0) {
    const notice = h('div', { class: 'notice', id: 'chat-no-program' }, h('p', null, 'There is no RetrieveThenAnswer program yet.'));
    if (programCan.write()) {
      const make = h('button', { type: 'button' }, 'Create the chat program');
      make.addEventListener('click', async () => {
        try {
          await api('POST', '/v1/programs', { name: 'chat', program: CHAT_PROGRAM, description: 'Console chat: answers from a kernel\'s passages with citations' });
          announce('Program chat registered.');
          await rerender();
        } catch (e) {
          showError(describe(e));
        }
      });
      notice.append(h('p', null, 'Register the default one (question → answer and citations, 3 passages):'), make);
    } else {
      notice.append(h('p', null, 'A writer can create one here or on the Programs page.'));
    }
    parts.push(notice);
  }
  if (kernels.length === 0 || programs.length === 0) {
    root.replaceChildren(...parts);
    return;
  }
  const wantKernel = query.get('kernel');
  const wantProgram = query.get('program');
  const kernel = select({ name: 'chat-kernel' }, kernels.map((k) => [k.id, `${k.collection} · ${k.id}`]), kernels.some((k) => k.id === wantKernel) ? wantKernel : kernels[0].id);
  const program = select({ name: 'chat-program' }, programs.map((p) => [p.name, `${p.name} (v${p.version})`]), programs.some((p) => p.name === wantProgram) ? wantProgram : programs[0].name);
  const question = h('textarea', { name: 'question', required: true, rows: '2', placeholder: 'What is the capital of France?' });
  const ask = h('button', { type: 'submit' }, 'Ask');
  const log = h('ol', { class: 'chat-log', id: 'chat-log', 'aria-live': 'polite', 'aria-label': 'Conversation' });
  const form = h('form', { 'aria-labelledby': 'ask-title', id: 'chat-form' },
    h('div', { class: 'actions' }, field('Kernel (collection · id)', kernel), field('Program', program)),
    field('Question', question, 'Enter sends; Shift+Enter starts a new line'),
    h('div', { class: 'actions' }, ask));
  question.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const q = question.value.trim();
    if (!q || ask.disabled) return;
    const info = programs.find((p) => p.name === program.value);
    const retrievers = Object.fromEntries(retrieverNames(info.program).map((n) => [n, kernel.value]));
    const label = kernel.selectedOptions[0] ? kernel.selectedOptions[0].textContent : kernel.value;
    ask.disabled = true;
    showError(null);
    const pending = h('li', { class: 'turn muted' }, `You: ${q} — the model is answering…`);
    log.append(pending);
    try {
      const r = await api('POST', `/v1/programs/${encodeURIComponent(info.name)}/run`, { inputs: { [info.program.query_field]: q }, retrievers });
      pending.replaceWith(turn(q, r, label));
      question.value = '';
      announce(`Answered, citing ${(r.outputs.citations || []).length} passage(s).`);
    } catch (e) {
      pending.remove();
      showError(describe(e));
    } finally {
      ask.disabled = false;
      question.focus();
    }
  });
  parts.push(h('h2', { id: 'ask-title' }, 'Ask'), form, h('h2', null, 'Conversation'), log);
  root.replaceChildren(...parts);
}
