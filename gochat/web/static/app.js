// GoChat web client: the wire contract of DESIGN.md section 4 in the browser.
//
// Upstream: messages are numbered per device (clientId 1, 2, 3, ...), kept in
// an outbox in localStorage and retransmitted until ACKed, so nothing typed is
// lost to a dropped connection or a closed tab. Downstream: the page holds
// every message up to `seq` of the user's list; pushes it already holds are
// dropped, a gap triggers a sync, and pushes are acknowledged cumulatively.
"use strict";

(function () {
  const RETRANSMIT_MS = 3000;
  const HEARTBEAT_MS = 30000;
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
  const KEEP_MESSAGES = 2000;
  const CODE_TEXT = {
    1000: "not logged in", 1001: "parameter illegal", 1002: "unauthorized user id",
    1003: "unauthorized", 1004: "server error", 1005: "no such user or group",
    1010: "unknown command", 1011: "out of order", 1012: "too large", 1013: "rate limited",
  };
  const PERMANENT = new Set([1001, 1002, 1003, 1005, 1010, 1012]);

  const $ = (id) => document.getElementById(id);
  const num = (v) => (typeof v === "number" ? v : v && v.toNumber ? v.toNumber() : Number(v || 0));
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  let T = null; // protobuf types and enums, loaded from the node
  let session = null; // {token, userId, nickname}
  let deviceId = null;
  let state = null; // persisted per user: {seq, messages, conversations, unread}
  let outbox = []; // persisted per user and device: [{clientId, msg, sentAt}]
  let ws = null;
  let loggedIn = false;
  let attempt = 0;
  let reconnectTimer = null;
  let buffer = new Map(); // seq -> message that arrived ahead of a gap
  let syncing = false;
  let pushAcked = 0;
  let current = null; // "u<id>" or "g<id>"

  // -- storage ---------------------------------------------------------------

  function load(key, fallback) {
    try {
      const raw = localStorage.getItem(key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch (e) {
      return fallback;
    }
  }

  function save(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch (e) {
      // Quota: drop the oldest half of the history and keep going.
      if (state && state.messages.length > 10) {
        state.messages.splice(0, state.messages.length >> 1);
      }
    }
  }

  const stateKey = () => "gochat:state:" + session.userId;
  const outboxKey = () => "gochat:outbox:" + session.userId + ":" + deviceId;
  const saveState = () => save(stateKey(), state);
  const saveOutbox = () => save(outboxKey(), outbox);

  function randomId() {
    const bytes = crypto.getRandomValues(new Uint8Array(8));
    return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // One device id per open tab, reused across reloads: the node keeps the last
  // clientId per (user, device), so two tabs must never share one.
  async function claimDevice() {
    if (!navigator.locks) {
      let id = sessionStorage.getItem("gochat:device");
      if (!id) {
        id = randomId();
        sessionStorage.setItem("gochat:device", id);
      }
      return id;
    }
    const known = load("gochat:devices", []);
    for (const id of known.concat([randomId()])) {
      const got = await new Promise((resolve) => {
        navigator.locks.request("gochat-device:" + id, { ifAvailable: true }, (lock) => {
          resolve(lock !== null);
          return lock === null ? undefined : new Promise(() => {}); // held while the page lives
        });
      });
      if (got) {
        if (!known.includes(id)) save("gochat:devices", known.concat([id]));
        return id;
      }
    }
    return randomId();
  }

  // -- protobuf --------------------------------------------------------------

  async function loadSchema() {
    const response = await fetch("/static/gochat-proto.json");
    const root = protobuf.Root.fromJSON(await response.json());
    const type = (name) => root.lookupType("pb." + name);
    const values = (name) => root.lookupEnum("pb." + name).values;
    return {
      Input: type("Input"), Output: type("Output"), LoginMsg: type("LoginMsg"),
      UpMsg: type("UpMsg"), PushMsg: type("PushMsg"), SyncInputMsg: type("SyncInputMsg"),
      SyncOutputMsg: type("SyncOutputMsg"), ACKMsg: type("ACKMsg"),
      Cmd: values("CmdType"), Ack: values("ACKType"), Session: values("SessionType"),
      Kind: values("MessageType"),
    };
  }

  function send(type, message, body) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const data = message ? message.encode(body).finish() : new Uint8Array(0);
    ws.send(T.Input.encode({ type: type, data: data }).finish());
  }

  // -- HTTP API --------------------------------------------------------------

  async function api(method, path, params, token) {
    const body = new URLSearchParams();
    for (const [key, value] of params) body.append(key, value);
    const headers = {};
    if (token) headers.authorization = "Bearer " + token;
    let url = path;
    const init = { method: method, headers: headers };
    if (method === "GET") url += "?" + body;
    else init.body = body;
    const response = await fetch(url, init);
    let reply;
    try {
      reply = await response.json();
    } catch (e) {
      throw new Error("HTTP " + response.status);
    }
    if (reply.code !== 200) throw new Error(reply.msg || "HTTP " + response.status);
    return reply.data;
  }

  // -- connection ------------------------------------------------------------

  function setStatus(text, online) {
    $("status").textContent = text;
    $("status").dataset.online = online ? "yes" : "no";
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (ws || !session) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + "/ws");
    socket.binaryType = "arraybuffer";
    ws = socket;
    setStatus("Connecting…", false);
    socket.onopen = () => {
      send(T.Cmd.CT_Login, T.LoginMsg, {
        token: encoder.encode(session.token), device_id: deviceId, push_ack: true,
      });
    };
    socket.onmessage = (event) => {
      if (ws === socket && event.data instanceof ArrayBuffer) received(new Uint8Array(event.data));
    };
    socket.onclose = () => {
      if (ws !== socket) return;
      ws = null;
      loggedIn = false;
      syncing = false;
      if (session) scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4)); // jitter spreads a herd
    attempt += 1;
    setStatus("Offline, reconnecting in " + Math.ceil(delay / 1000) + " s", false);
    reconnectTimer = setTimeout(connect, delay);
  }

  function disconnect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    const socket = ws;
    ws = null;
    loggedIn = false;
    if (socket) socket.close(1000);
  }

  function received(bytes) {
    if (bytes.length && bytes[0] === 0x0a) {
      // An OutputBatch (node option --output-batch): field 1 repeated, one
      // serialized Output each. A plain Output never starts with 0x0a.
      const parts = [];
      try {
        const reader = protobuf.Reader.create(bytes);
        while (reader.pos < reader.len) {
          const tag = reader.uint32();
          if (tag === 0x0a) parts.push(reader.bytes());
          else reader.skipType(tag & 7);
        }
      } catch (e) {
        return;
      }
      parts.forEach(received);
      return;
    }
    let out;
    try {
      out = T.Output.decode(bytes);
    } catch (e) {
      return; // not ours to fix; the node never sends this
    }
    const type = out.type;
    if (type === T.Cmd.CT_ACK) {
      const ack = T.ACKMsg.decode(out.data);
      if (ack.type === T.Ack.AT_Login) onLoginAck(out.code, ack);
      else if (ack.type === T.Ack.AT_Up) onUpAck(out.code, num(ack.clientId), num(ack.seq));
    } else if (type === T.Cmd.CT_Message && out.code === 200) {
      offer(messageFromWire(T.PushMsg.decode(out.data).msg));
      // Every push is answered, a repeat too: the node may have missed the
      // last ACK and keeps retransmitting until it hears one.
      acknowledgePushes(true);
    } else if (type === T.Cmd.CT_Sync) {
      onSync(out.code, T.SyncOutputMsg.decode(out.data));
    }
  }

  function onLoginAck(code, ack) {
    if (code === 1003) {
      // A bad or expired token: the node closes the connection; sign in again.
      logout("Your session expired; please log in again.", false);
      return;
    }
    if (code !== 200) {
      if (ws) ws.close(); // transient: the reconnect backoff tries again
      return;
    }
    loggedIn = true;
    attempt = 0;
    pushAcked = 0;
    setStatus("Online", true);
    if (num(ack.seq) < state.seq) {
      // The node's list is shorter than what this browser holds: a different
      // database (a reset development node). Start over from its list.
      state = { seq: 0, messages: [], conversations: [], unread: {} };
      buffer = new Map();
      pushAcked = 0;
      saveState();
    }
    // Everything up to ack.clientId is stored (its own copy comes back by
    // sync); the rest is renumbered after it, in order, and sent again.
    const last = num(ack.clientId);
    session.lastClientId = last;
    outbox = outbox.filter((entry) => entry.clientId > last);
    outbox.forEach((entry, i) => { entry.clientId = last + 1 + i; });
    saveOutbox();
    outbox.forEach(transmit);
    render();
    sync();
  }

  // -- upstream --------------------------------------------------------------

  function nextClientId() {
    return outbox.length ? outbox[outbox.length - 1].clientId + 1 : null;
  }

  function queue(msg) {
    // Until login says where the device's window stands, a placeholder id that
    // login renumbers; afterwards, one past the newest in the outbox or the ack.
    const id = nextClientId() || (session.lastClientId || 0) + 1;
    const entry = { clientId: id, msg: msg, sentAt: 0, local: randomId() };
    outbox.push(entry);
    saveOutbox();
    if (loggedIn) transmit(entry);
    render();
  }

  function transmit(entry) {
    entry.sentAt = Date.now();
    send(T.Cmd.CT_Message, T.UpMsg, {
      msg: {
        session_type: entry.msg.session_type, receiver_id: entry.msg.receiver_id,
        message_type: T.Kind.MT_Text, content: encoder.encode(entry.msg.text),
      },
      clientId: entry.clientId,
    });
  }

  function onUpAck(code, clientId, seq) {
    const index = outbox.findIndex((entry) => entry.clientId === clientId);
    if (index < 0) return; // a duplicate ACK
    const entry = outbox[index];
    session.lastClientId = Math.max(session.lastClientId || 0, clientId);
    if (code === 200) {
      outbox.splice(index, 1);
      saveOutbox();
      offer({
        session_type: entry.msg.session_type, receiver_id: entry.msg.receiver_id,
        sender_id: session.userId, text: entry.msg.text, seq: seq, send_time: Date.now(),
      });
    } else if (code === 1011) {
      outbox.forEach(transmit); // the node missed an earlier one: resend in order
    } else if (PERMANENT.has(code)) {
      outbox.splice(index, 1);
      saveOutbox();
      entry.msg.error = code;
      state.failed = (state.failed || []).concat([entry.msg]).slice(-50);
      saveState();
      render();
    }
    // 1000, 1004, 1013: the retransmit timer sends it again.
  }

  // One timer for the page: resend what is unACKed past the timeout, and
  // close a gap that a finished sync could not (a push raced past its end).
  function tick() {
    if (!loggedIn) return;
    const due = Date.now() - RETRANSMIT_MS;
    for (const entry of outbox) if (entry.sentAt < due) transmit(entry);
    if (buffer.size && !syncing) sync();
  }

  // -- downstream ------------------------------------------------------------

  function messageFromWire(m) {
    let text;
    try {
      text = decoder.decode(m.content);
    } catch (e) {
      text = "(undecodable content)";
    }
    return {
      session_type: m.session_type, receiver_id: num(m.receiver_id), sender_id: num(m.sender_id),
      text: text, seq: num(m.seq), send_time: num(m.send_time),
    };
  }

  function offer(msg) {
    if (msg.seq <= state.seq || buffer.has(msg.seq)) return;
    buffer.set(msg.seq, msg);
    let changed = false;
    while (buffer.has(state.seq + 1)) {
      const next = buffer.get(state.seq + 1);
      buffer.delete(state.seq + 1);
      state.seq += 1;
      hold(next);
      changed = true;
    }
    if (changed) {
      if (state.messages.length > KEEP_MESSAGES) state.messages.splice(0, state.messages.length - KEEP_MESSAGES);
      saveState();
      render();
    }
    if (buffer.size && !syncing) sync(); // a gap: fetch what is missing first
  }

  function hold(msg) {
    state.messages.push(msg);
    const key = conversationOf(msg);
    if (!state.conversations.includes(key)) state.conversations.push(key);
    if (key !== current && msg.sender_id !== session.userId) {
      state.unread[key] = (state.unread[key] || 0) + 1;
    }
  }

  function sync() {
    if (!loggedIn) return;
    syncing = true;
    send(T.Cmd.CT_Sync, T.SyncInputMsg, { seq: state.seq });
  }

  function onSync(code, body) {
    if (!syncing) return;
    if (code !== 200) {
      syncing = false;
      return;
    }
    const before = state.seq;
    for (const m of body.messages) offer(messageFromWire(m));
    for (const seq of buffer.keys()) if (seq <= state.seq) buffer.delete(seq);
    if (body.has_more && state.seq > before) {
      send(T.Cmd.CT_Sync, T.SyncInputMsg, { seq: state.seq });
      return;
    }
    syncing = false;
    acknowledgePushes();
    if (buffer.size && state.seq > before) sync();
  }

  function acknowledgePushes(always) {
    if (!loggedIn || (state.seq <= pushAcked && !always)) return;
    pushAcked = state.seq;
    send(T.Cmd.CT_ACK, T.ACKMsg, { type: T.Ack.AT_Push, seq: state.seq });
  }

  // -- view ------------------------------------------------------------------

  function conversationOf(msg) {
    if (msg.session_type === T.Session.ST_Group) return "g" + msg.receiver_id;
    return "u" + (msg.sender_id === session.userId ? msg.receiver_id : msg.sender_id);
  }

  function title(key) {
    return (key[0] === "g" ? "Group " : "User ") + key.slice(1);
  }

  function open(key) {
    current = key;
    if (!state.conversations.includes(key)) state.conversations.push(key);
    delete state.unread[key];
    saveState();
    render();
    $("text").focus();
  }

  function timeOf(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function messageItem(msg, note) {
    const li = document.createElement("li");
    const mine = msg.sender_id === session.userId;
    li.className = "msg " + (mine ? "mine" : "theirs") + (note ? " pending" : "");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = mine ? "You" : "User " + msg.sender_id;
    li.append(who);
    if (msg.send_time) {
      const when = document.createElement("time");
      when.dateTime = new Date(msg.send_time).toISOString();
      when.textContent = timeOf(msg.send_time);
      li.append(" ", when);
    }
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = msg.text;
    li.append(text);
    if (note) {
      const small = document.createElement("small");
      small.className = "note";
      small.textContent = note;
      li.append(small);
    }
    if (msg.seq) li.dataset.seq = msg.seq;
    return li;
  }

  function render() {
    if (!session || !state) return;
    const list = $("conversations");
    list.replaceChildren();
    for (const key of state.conversations) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.conversation = key;
      button.textContent = title(key);
      if (key === current) button.setAttribute("aria-current", "true");
      const unread = state.unread[key];
      if (unread) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = unread;
        badge.setAttribute("aria-label", unread + " unread");
        button.append(" ", badge);
      }
      button.addEventListener("click", () => open(key));
      li.append(button);
      list.append(li);
    }

    const log = $("messages");
    log.replaceChildren();
    $("text").disabled = $("send").disabled = current === null;
    if (current === null) {
      $("conv-title").textContent = "No conversation open";
      return;
    }
    $("conv-title").textContent = title(current);
    for (const msg of state.messages) if (conversationOf(msg) === current) log.append(messageItem(msg));
    for (const entry of outbox) {
      const msg = Object.assign({ sender_id: session.userId }, entry.msg);
      if (conversationOf(msg) === current) log.append(messageItem(msg, "sending…"));
    }
    for (const msg of state.failed || []) {
      const m = Object.assign({ sender_id: session.userId }, msg);
      if (conversationOf(m) === current) {
        log.append(messageItem(m, "not delivered: " + (CODE_TEXT[msg.error] || "code " + msg.error)));
      }
    }
    log.scrollTop = log.scrollHeight;
  }

  // -- sign in and out -------------------------------------------------------

  function start(newSession) {
    session = newSession;
    save("gochat:session", session);
    state = load(stateKey(), null) || { seq: 0, messages: [], conversations: [], unread: {} };
    outbox = load(outboxKey(), []);
    buffer = new Map();
    pushAcked = 0;
    current = null;
    $("auth").hidden = true;
    $("chat").hidden = false;
    $("logout").hidden = false;
    $("me").hidden = false;
    $("me").dataset.userId = session.userId;
    $("me").textContent = "You are user " + session.userId +
      (session.nickname ? " (" + session.nickname + ")" : "");
    render();
    connect();
  }

  // `wipe`: the user chose to leave, so this browser forgets the history too.
  function logout(reason, wipe) {
    if (session && wipe) {
      localStorage.removeItem(stateKey());
      localStorage.removeItem(outboxKey());
    }
    session = null;
    state = null;
    localStorage.removeItem("gochat:session");
    disconnect();
    $("auth").hidden = false;
    $("chat").hidden = true;
    $("logout").hidden = true;
    $("me").hidden = true;
    $("auth-error").textContent = reason || "";
    setStatus("Not signed in", false);
  }

  async function onAuth(event) {
    event.preventDefault();
    const register = event.submitter && event.submitter.value === "register";
    const phone = $("phone").value.trim();
    const password = $("password").value;
    const nickname = $("nickname").value.trim();
    $("auth-error").textContent = "";
    if (register && !nickname) {
      $("auth-error").textContent = "A nickname is needed to register.";
      $("nickname").focus();
      return;
    }
    try {
      let data;
      if (register) {
        data = await api("POST", "/register",
          [["phone_number", phone], ["password", password], ["nickname", nickname]]);
      } else {
        data = await api("POST", "/login", [["phone_number", phone], ["password", password]]);
      }
      $("password").value = "";
      start({ token: data.token, userId: Number(data.id || data.user_id), nickname: nickname });
    } catch (e) {
      $("auth-error").textContent = (register ? "Could not register: " : "Could not log in: ") + e.message;
    }
  }

  async function onCreateGroup(event) {
    event.preventDefault();
    $("group-error").textContent = "";
    const ids = $("group-members").value.split(/[\s,]+/).filter(Boolean);
    try {
      const data = await api("POST", "/group/create",
        [["name", $("group-name").value.trim()]].concat(ids.map((id) => ["ids", id])),
        session.token);
      $("group-name").value = "";
      $("group-members").value = "";
      open("g" + Number(data.id));
    } catch (e) {
      $("group-error").textContent = "Could not create the group: " + e.message;
    }
  }

  function onOpen(event) {
    event.preventDefault();
    const id = Number($("open-id").value.trim());
    if (!Number.isSafeInteger(id) || id <= 0) return;
    $("open-id").value = "";
    open($("open-kind").value + id);
  }

  function onSend(event) {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim() || current === null) return;
    $("text").value = "";
    queue({
      session_type: current[0] === "g" ? T.Session.ST_Group : T.Session.ST_Single,
      receiver_id: Number(current.slice(1)),
      text: text,
    });
  }

  async function main() {
    T = await loadSchema();
    deviceId = await claimDevice();
    document.body.dataset.device = deviceId;
    $("auth-form").addEventListener("submit", onAuth);
    $("group-form").addEventListener("submit", onCreateGroup);
    $("open-form").addEventListener("submit", onOpen);
    $("send-form").addEventListener("submit", onSend);
    $("logout").addEventListener("click", () => logout("", true));
    window.addEventListener("online", () => { if (session && !ws) connect(); });
    setInterval(tick, 1000);
    setInterval(() => { if (loggedIn) send(T.Cmd.CT_Heartbeat, null); }, HEARTBEAT_MS);
    const saved = load("gochat:session", null);
    if (saved && saved.token) start(saved);
    else logout("", false);
    document.body.dataset.ready = "yes";
  }

  main().catch((e) => {
    setStatus("Could not start: " + e.message, false);
  });
})();
