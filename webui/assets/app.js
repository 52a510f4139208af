// The live page of immortald: a snapshot of the cluster, then its changes,
// from /ui/api/events (server-sent events). Every value is put in the page
// as text, never as HTML.
'use strict';
(() => {
  const lives = new Map(); // name -> {v, base, at, row}
  const shown = new Map(); // life id -> the highest age (ms) shown for it
  let members = [];
  let rev = 0;
  let member = '';
  let source = null;
  let retry = null;

  const $ = (sel) => document.querySelector(sel);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function setStatus(state, text) {
    const s = $('#status');
    s.dataset.state = state;
    s.textContent = text;
  }

  function connect() {
    setStatus('connecting', 'connecting');
    source = new EventSource('/ui/api/events');
    source.addEventListener('snapshot', (m) => onSnapshot(JSON.parse(m.data)));
    source.addEventListener('delta', (m) => onDelta(JSON.parse(m.data)));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (the member is starting or stopping): try again.
        setStatus('down', 'disconnected: retrying');
        source.close();
        clearTimeout(retry);
        retry = setTimeout(connect, 2000);
      } else {
        setStatus('connecting', 'reconnecting');
      }
    };
  }

  function onSnapshot(s) {
    member = s.member;
    rev = s.rev;
    for (const l of lives.values()) l.row.remove();
    lives.clear();
    for (const v of s.lives) upsert(v);
    setMembers(s.members);
    $('#log').replaceChildren();
    for (const e of s.log) addEntry(e);
    setEtcd(s.etcd || '');
    setStatus('live', 'live');
    summary();
  }

  function onDelta(d) {
    rev = d.rev;
    for (const name of d.removed || []) {
      const l = lives.get(name);
      if (l) {
        l.row.remove();
        lives.delete(name);
      }
    }
    for (const v of d.lives || []) upsert(v);
    if (d.members) setMembers(d.members);
    for (const e of d.log || []) addEntry(e);
    if (d.etcd !== undefined) setEtcd(d.etcd);
    summary();
  }

  function setEtcd(problem) {
    const p = $('#etcd');
    p.hidden = problem === '';
    p.textContent = problem ? 'etcd: ' + problem + ' (showing revision ' + rev + ')' : '';
    if (problem) setStatus('behind', 'behind');
    else if ($('#status').dataset.state === 'behind') setStatus('live', 'live');
  }

  function summary() {
    let running = 0;
    for (const l of lives.values()) if (l.v.state === 'running') running++;
    $('#summary').textContent = members.length + ' member' + (members.length === 1 ? '' : 's') + ' · ' +
      lives.size + ' li' + (lives.size === 1 ? 'fe' : 'ves') + ', ' + running + ' running · served by ' + member +
      ' · revision ' + rev;
  }

  function setMembers(ms) {
    members = ms;
    const body = $('#members tbody');
    body.replaceChildren();
    for (const m of ms) {
      const tr = el('tr');
      tr.dataset.member = m.id;
      tr.dataset.ready = m.ready;
      tr.append(el('td', 'id', m.id), el('td', '', m.address || '–'), el('td', '', m.kinds.join(', ')),
        el('td', 'num', m.pid ? String(m.pid) : '–'));
      const ready = el('td', '', m.corrupt ? 'record does not parse' : (m.ready ? 'ready' : 'not ready'));
      ready.className = 'badge ' + (m.ready ? 'ok' : 'bad');
      ready.title = m.corrupt || 'a record on a live lease, and a heartbeat seen within the last 3 s (or 3 of its intervals)';
      tr.append(ready, el('td', 'num', String(m.lives_held)), el('td', '', m.version || '–'),
        el('td', '', m.started ? new Date(m.started).toLocaleString() : '–'));
      body.append(tr);
    }
  }

  // upsert puts life v in its row, keeping the rows sorted by name.
  function upsert(v) {
    let l = lives.get(v.name);
    if (!l) {
      const row = el('tr');
      for (const c of ['name', 'kind', 'state', 'holder', 'age num', 'inc num', 'token num', 'child', 'error']) row.append(el('td', c));
      l = {row};
      lives.set(v.name, l);
      const body = $('#lives tbody');
      const next = [...body.children].find((r) => r.dataset.life > v.name);
      body.insertBefore(row, next || null);
    }
    l.v = v;
    l.base = v.age_now_ms;
    l.at = performance.now();
    const r = l.row;
    const cell = (cls) => r.querySelector('td.' + cls.split(' ')[0]);
    r.dataset.life = v.name;
    r.dataset.state = v.state;
    r.dataset.holder = v.holder || '';
    r.dataset.incarnation = v.incarnation;
    r.dataset.lifeId = v.life_id;
    r.dataset.ageMs = v.age_ms;
    r.dataset.token = v.fencing_token || 0;
    cell('name').textContent = v.name;
    cell('name').title = v.labels ? Object.entries(v.labels).map(([k, x]) => k + '=' + x).join(', ') : '';
    cell('kind').textContent = v.kind;
    const state = cell('state');
    state.textContent = v.state + (v.child && v.child.state !== 'running' ? '/' + v.child.state : '');
    state.className = 'state badge ' + v.state;
    cell('holder').textContent = v.holder || '–';
    cell('inc').textContent = v.incarnation || '–';
    cell('token').textContent = v.fencing_token || '–';
    cell('child').textContent = v.child ? childText(v.child) : '';
    cell('error').textContent = v.error || '';
    cell('age').title = 'stored age ' + fmtAge(v.age_ms) + (v.checkpoint_time ? ' at ' + v.checkpoint_time : '');
    tickOne(l);
  }

  function childText(c) {
    let s = c.state;
    if (c.state !== 'running' || c.exit_code) s += ', exit ' + c.exit_code;
    if (c.restarts) s += ', ' + c.restarts + ' restart' + (c.restarts === 1 ? '' : 's');
    if (c.error) s += ': ' + c.error;
    return s;
  }

  // tickOne shows l's age now: the last estimate, ticking on while it runs.
  // The page never shows a life's age lower than it showed it: between
  // heartbeats the age is an estimate, and after a crash (which loses what
  // was not stored) the page holds the age it showed until the stored age
  // passes it.
  function tickOne(l) {
    const est = l.v.ticking ? l.base + (performance.now() - l.at) : l.base;
    const age = Math.max(shown.get(l.v.life_id) || 0, est);
    shown.set(l.v.life_id, age);
    const td = l.row.querySelector('td.age');
    td.dataset.shownMs = Math.floor(age);
    td.textContent = fmtAge(age);
  }

  function fmtAge(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + ' s';
    const two = (n) => String(n).padStart(2, '0');
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + two(s % 60) + 's';
    const h = Math.floor(m / 60);
    if (h < 24) return h + 'h ' + two(m % 60) + 'm ' + two(s % 60) + 's';
    return Math.floor(h / 24) + 'd ' + two(h % 24) + 'h ' + two(m % 60) + 'm';
  }

  function addEntry(e) {
    const li = el('li');
    li.dataset.event = e.event;
    li.dataset.seq = e.seq;
    if (e.life) li.dataset.life = e.life;
    const t = new Date(e.time);
    li.append(el('time', '', t.toLocaleTimeString([], {hour12: false}) + '.' + String(t.getMilliseconds()).padStart(3, '0')));
    li.append(el('span', 'event badge', e.event));
    li.append(el('span', 'what', e.life || e.member || ''));
    let where = '';
    if (e.life && e.from && e.member) where = e.from + ' → ' + e.member;
    else if (e.life && e.member) where = 'on ' + e.member;
    if (where) li.append(el('span', 'where', where));
    if (e.incarnation) li.append(el('span', 'meta', 'incarnation ' + e.incarnation + ' · age ' + fmtAge(e.age_ms || 0)));
    if (e.detail) li.append(el('span', 'detail', e.detail));
    const log = $('#log');
    log.prepend(li);
    while (log.children.length > 200) log.lastElementChild.remove();
  }

  setInterval(() => {
    for (const l of lives.values()) tickOne(l);
  }, 100);
  connect();
})();
