/*
 * Herald web chat widget. Add it to a page with one tag:
 *
 *   <script src="https://herald.example.com/inbound/chat/widget.js" async></script>
 *
 * Optional attributes on that tag: data-title, data-greeting (shown before the first
 * message), data-placeholder, data-color (a CSS colour), data-position ("left" or "right"),
 * data-open ("true" to start open). The page's site must be in the channel's
 * allowed_origins. window.HeraldChat.open(), .close() and .send(text) drive it from the page.
 *
 * The visitor's session token, the conversation and any message not yet accepted are kept in
 * localStorage, so a reload or another tab carries on where the visitor was. Each message
 * gets an id once and keeps it on every retry: Herald records it once however often it is
 * sent. Replies come over Server-Sent Events; after a drop the stream resumes from the last
 * reply received, and replies sent meanwhile arrive then.
 */
(function () {
  'use strict';

  var script = document.currentScript || (function () {
    var all = document.querySelectorAll('script[src*="/widget.js"]');
    return all[all.length - 1];
  })();
  if (!script || !script.src) return;
  var base = script.src.replace(/\/widget\.js(?:[?#].*)?$/, '');
  if (window.HeraldChat && window.HeraldChat.base === base) return;

  var opt = function (name, fallback) {
    var v = script.getAttribute('data-' + name);
    return v === null || v === '' ? fallback : v;
  };
  var settings = {
    title: opt('title', 'Chat with us'),
    greeting: opt('greeting', ''),
    placeholder: opt('placeholder', 'Type a message…'),
    color: opt('color', '#1f6feb'),
    left: opt('position', 'right') === 'left',
    open: opt('open', 'false') === 'true'
  };
  var KEY = 'herald-chat:' + base;
  var KEEP = 100; // messages kept in the transcript

  // ---- State, kept in localStorage (or in memory where storage is refused).

  var memory = null;
  function load() {
    try {
      var raw = window.localStorage.getItem(KEY);
      if (raw) return JSON.parse(raw);
    } catch (e) { /* refused or unreadable: start afresh */ }
    return memory || { token: null, visitor: null, expiresAt: 0, lastId: null, items: [] };
  }
  function save() {
    state.items = state.items.slice(-KEEP);
    memory = state;
    try { window.localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) { /* memory only */ }
  }
  var state = load();
  if (!Array.isArray(state.items)) state.items = [];

  function newId() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }

  // ---- The page's part: a bubble and a panel, in a shadow root so neither the page's
  // styles nor ours leak across.

  var host = document.createElement('div');
  host.setAttribute('data-herald-chat', '');
  var root = host.attachShadow ? host.attachShadow({ mode: 'open' }) : host;
  var side = settings.left ? 'left' : 'right';
  var style = document.createElement('style');
  style.textContent =
    ':host{all:initial}' +
    '*{box-sizing:border-box;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}' +
    '.bubble{position:fixed;bottom:20px;' + side + ':20px;width:56px;height:56px;border-radius:50%;border:0;cursor:pointer;' +
    'background:var(--c);color:#fff;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483000;font-size:26px;line-height:56px}' +
    '.badge{position:absolute;top:-2px;right:-2px;min-width:20px;height:20px;border-radius:10px;background:#d1242f;color:#fff;' +
    'font-size:12px;line-height:20px;padding:0 5px;display:none}' +
    '.panel{position:fixed;bottom:88px;' + side + ':20px;width:360px;max-width:calc(100vw - 40px);height:520px;' +
    'max-height:calc(100vh - 120px);display:none;flex-direction:column;background:#fff;color:#1f2328;border-radius:12px;' +
    'box-shadow:0 8px 30px rgba(0,0,0,.25);overflow:hidden;z-index:2147483000}' +
    '.panel.open{display:flex}' +
    '.head{background:var(--c);color:#fff;padding:12px 14px;display:flex;align-items:center;justify-content:space-between;font-weight:600}' +
    '.head button{background:transparent;border:0;color:#fff;font-size:20px;cursor:pointer;line-height:1}' +
    '.log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:6px;background:#f6f8fa}' +
    '.msg{max-width:80%;padding:8px 11px;border-radius:14px;white-space:pre-wrap;word-wrap:break-word;font-size:14px;line-height:1.4}' +
    '.them{align-self:flex-start;background:#fff;border:1px solid #d0d7de}' +
    '.me{align-self:flex-end;background:var(--c);color:#fff}' +
    '.me.pending{opacity:.6}.me.failed{background:#d1242f}' +
    '.who{font-size:11px;color:#656d76;align-self:flex-start;margin:4px 0 -4px 4px}' +
    '.note{font-size:12px;color:#656d76;text-align:center;padding:4px}' +
    '.msg a{color:inherit}' +
    'form{display:flex;border-top:1px solid #d0d7de;background:#fff}' +
    'textarea{flex:1;border:0;resize:none;padding:12px;font-size:14px;height:48px;outline:none;color:#1f2328;background:#fff}' +
    'form button{border:0;background:transparent;color:var(--c);font-weight:600;padding:0 14px;cursor:pointer}';
  root.appendChild(style);

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    return e;
  }
  var bubble = el('button', 'bubble', '💬');
  bubble.type = 'button';
  bubble.setAttribute('aria-label', settings.title);
  bubble.style.setProperty('--c', settings.color);
  var badge = el('span', 'badge');
  bubble.appendChild(badge);
  var panel = el('div', 'panel');
  panel.setAttribute('role', 'dialog');
  panel.setAttribute('aria-label', settings.title);
  panel.style.setProperty('--c', settings.color);
  var head = el('div', 'head');
  head.appendChild(el('span', '', settings.title));
  var closer = el('button', '', '×');
  closer.type = 'button';
  closer.setAttribute('aria-label', 'Close');
  head.appendChild(closer);
  var log = el('div', 'log');
  log.setAttribute('aria-live', 'polite');
  var form = el('form');
  var input = el('textarea');
  input.placeholder = settings.placeholder;
  input.setAttribute('aria-label', settings.placeholder);
  var sendButton = el('button', '', 'Send');
  sendButton.type = 'submit';
  form.appendChild(input);
  form.appendChild(sendButton);
  panel.appendChild(head);
  panel.appendChild(log);
  panel.appendChild(form);
  root.appendChild(bubble);
  root.appendChild(panel);

  var unread = 0;
  var notice = '';

  // Text, with web addresses made into links; never HTML.
  function fill(node, text) {
    var parts = String(text).split(/(https?:\/\/[^\s<>"']+)/g);
    for (var i = 0; i < parts.length; i++) {
      if (i % 2 === 1) {
        var a = document.createElement('a');
        a.href = parts[i];
        a.textContent = parts[i];
        a.target = '_blank';
        a.rel = 'noopener noreferrer';
        node.appendChild(a);
      } else if (parts[i]) {
        node.appendChild(document.createTextNode(parts[i]));
      }
    }
  }

  function render() {
    log.textContent = '';
    if (settings.greeting && state.items.length === 0) log.appendChild(el('div', 'msg them', settings.greeting));
    var lastFrom = null;
    state.items.forEach(function (m) {
      if (m.who === 'them' && m.from && m.from !== lastFrom) log.appendChild(el('div', 'who', m.from));
      lastFrom = m.who === 'them' ? m.from : null;
      var node = el('div', 'msg ' + m.who + (m.state ? ' ' + m.state : ''));
      fill(node, m.text);
      if (m.state === 'failed' && m.error) node.title = m.error;
      log.appendChild(node);
    });
    if (notice) log.appendChild(el('div', 'note', notice));
    log.scrollTop = log.scrollHeight;
    badge.textContent = String(unread);
    badge.style.display = unread > 0 ? 'block' : 'none';
  }

  function isOpen() { return panel.classList.contains('open'); }
  function open() {
    panel.classList.add('open');
    unread = 0;
    render();
    start();
    input.focus();
  }
  function close() { panel.classList.remove('open'); bubble.focus(); }
  bubble.addEventListener('click', function () { if (isOpen()) close(); else open(); });
  closer.addEventListener('click', close);
  panel.addEventListener('keydown', function (e) { if (e.key === 'Escape') close(); });
  input.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); submit(); }
  });
  form.addEventListener('submit', function (e) { e.preventDefault(); submit(); });

  // ---- Talking to Herald.

  var sessionPromise = null;
  var asking = false;
  // A session for this visitor: the stored token renewed (same visitor while it is good),
  // or a new one. One request at a time: two at once would make two visitors.
  function session(force) {
    if (sessionPromise && (asking || (!force && state.expiresAt - Date.now() > 60000))) return sessionPromise;
    asking = true;
    sessionPromise = fetch(base + '/session', {
      method: 'POST',
      headers: state.token ? { Authorization: 'Bearer ' + state.token } : {}
    }).then(function (r) {
      if (!r.ok) throw new Error('session: ' + r.status);
      return r.json();
    }).then(function (s) {
      asking = false;
      if (state.visitor && s.visitor !== state.visitor) state.lastId = null; // someone new
      state.token = s.token;
      state.visitor = s.visitor;
      state.expiresAt = Date.now() + s.expires_in * 1000;
      save();
      return s.token;
    }, function (e) {
      asking = false;
      sessionPromise = null;
      throw e;
    });
    return sessionPromise;
  }

  // Bot replies that arrive together are put in the order they were written (their ids,
  // UUIDv7, sort by time), as delivery may run them side by side.
  function receive(reply) {
    for (var i = 0; i < state.items.length; i++) if (state.items[i].id === reply.id) return;
    var item = { id: reply.id, who: 'them', text: reply.text, from: reply.from || null };
    var at = state.items.length;
    while (at > 0 && state.items[at - 1].who === 'them' && state.items[at - 1].id > reply.id) at--;
    state.items.splice(at, 0, item);
    save();
    if (!isOpen() || document.hidden) unread++;
    render();
  }

  var stream = null;
  var backoff = 1000;
  var started = false;
  function start() {
    if (started) return;
    started = true;
    connect();
    state.items.forEach(function (m) { if (m.who === 'me' && m.state === 'pending') post(m, 0); });
  }
  function connect() {
    if (stream) { stream.close(); stream = null; }
    session(false).then(function (token) {
      var url = base + '/events?token=' + encodeURIComponent(token) +
        (state.lastId ? '&after=' + encodeURIComponent(state.lastId) : '');
      var es = new EventSource(url);
      stream = es;
      es.addEventListener('ready', function () { backoff = 1000; if (notice) { notice = ''; render(); } });
      es.onmessage = function (e) {
        var data;
        try { data = JSON.parse(e.data); } catch (err) { return; }
        if (e.lastEventId) state.lastId = e.lastEventId;
        receive(data);
      };
      es.onerror = function () {
        // EventSource retries a dropped stream by itself; a refused one (401: the session
        // ran out; 429; 403) it gives up on, and so it is opened again here, with a renewed
        // session, a little later each time.
        if (es.readyState !== EventSource.CLOSED) return;
        es.close();
        if (stream === es) stream = null;
        retryLater();
      };
    }, retryLater);
  }
  function retryLater() {
    notice = 'Reconnecting…';
    render();
    setTimeout(function () { session(true).then(connect, retryLater); }, backoff);
    backoff = Math.min(backoff * 2, 30000);
  }

  function submit() {
    var text = input.value.trim();
    if (!text) return;
    input.value = '';
    send(text);
  }
  function send(text) {
    var item = { id: newId(), who: 'me', text: text, state: 'pending' };
    state.items.push(item);
    save();
    render();
    start();
    post(item, 0);
  }
  // Posts one message, again and again with the same id until Herald has it (or refuses it
  // for good: too long, malformed).
  function post(item, attempt) {
    session(false).then(function (token) {
      return fetch(base, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
        body: JSON.stringify({ id: item.id, text: item.text })
      });
    }).then(function (r) {
      if (r.ok) return mark(item, null);
      if (r.status === 401 && attempt < 3) return session(true).then(function () { post(item, attempt + 1); });
      if (r.status === 429) {
        // Over the sender limit: the message waits, and goes when Herald says it may.
        var wait = parseInt(r.headers.get('Retry-After'), 10) || 30;
        setTimeout(function () { post(item, attempt + 1); }, wait * 1000);
        return;
      }
      if (r.status === 400 || r.status === 403 || r.status === 413) {
        return r.text().then(function (why) { mark(item, 'failed', why); });
      }
      throw new Error('HTTP ' + r.status);
    }).catch(function () {
      setTimeout(function () { post(item, attempt + 1); }, Math.min(1000 * Math.pow(2, attempt), 30000));
    });
  }
  function mark(item, st, error) {
    state.items.forEach(function (m) {
      if (m.id === item.id) {
        if (st) m.state = st; else delete m.state;
        if (error) m.error = error;
      }
    });
    save();
    render();
  }

  document.addEventListener('visibilitychange', function () {
    if (!document.hidden && isOpen() && unread) { unread = 0; render(); }
  });

  // Another tab of the same site changed the conversation.
  window.addEventListener('storage', function (e) {
    if (e.key !== KEY || !e.newValue) return;
    try { state = JSON.parse(e.newValue); } catch (err) { return; }
    render();
  });

  window.HeraldChat = { base: base, open: open, close: close, send: send };

  function mount() {
    document.body.appendChild(host);
    render();
    // A returning visitor with a conversation hears replies sent while they were away.
    if (settings.open) open();
    else if (state.token && state.items.length) start();
  }
  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount);
})();
