// GoChat web client: the wire contract of DESIGN.md section 4 in the browser.
//
// Upstream: messages are numbered per device (clientId 1, 2, 3, ...), kept in
// an outbox in localStorage and retransmitted until ACKed, so nothing typed is
// lost to a dropped connection or a closed tab. Downstream: the page holds
// every message up to `seq` of the user's list; pushes it already holds are
// dropped, a gap triggers a sync, and pushes are acknowledged cumulatively.
//
// People and conversations: titles are nicknames and group names (asked of
// the node and cached), the conversation list, its last messages and unread
// counts come from GET /conversations and are then kept up to date by what
// arrives; read positions go up as CT_Read (the badge clears on the user's
// other devices, a one-to-one peer shows "Seen"), typing as CT_Typing. Both
// come down only because the page asks for them at login (notices). "Seen"
// also comes from the list (peer_read_seq), so it survives a reload.
"use strict";

(function () {
  const RETRANSMIT_MS = 3000;
  const HEARTBEAT_MS = 30000;
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
  const KEEP_MESSAGES = 2000;
  const TYPING_SEND_MS = 3000; // at most one typing notice per conversation this often
  const TYPING_SHOW_MS = 5000; // a notice is shown this long unless a message ends it
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
  let state = null; // persisted per user, see emptyState()
  let outbox = []; // persisted per user and device: [{clientId, msg, sentAt}]
  let ws = null;
  let loggedIn = false;
  let attempt = 0;
  let reconnectTimer = null;
  let buffer = new Map(); // seq -> message that arrived ahead of a gap
  let syncing = false;
  let pushAcked = 0;
  let current = null; // "u<id>" or "g<id>"
  let listLoaded = false; // GET /conversations answered since login
  let wantUsers = new Set(); // user ids whose nicknames are to be asked for
  let namesTimer = null;
  let typing = {}; // conversation -> {userId: expiry time}
  let typingSent = {}; // conversation -> when this page last said it was typing
  let readSent = {}; // conversation -> the highest seq this page said it read
  let panel = null; // the group panel's data: {id, name, owner_id, members, read_count}

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
      ReadMsg: type("ReadMsg"), TypingMsg: type("TypingMsg"),
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
    if (reply.code !== 200) {
      const error = new Error(reply.msg || "HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
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
        token: encoder.encode(session.token), device_id: deviceId, push_ack: true, notices: true,
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
    } else if (type === T.Cmd.CT_Read && out.code === 200) {
      onRead(T.ReadMsg.decode(out.data));
    } else if (type === T.Cmd.CT_Typing && out.code === 200) {
      onTyping(T.TypingMsg.decode(out.data));
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
      state = emptyState();
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
    listLoaded = false;
    readSent = {};
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
      message_type: m.message_type, text: text, seq: num(m.seq), send_time: num(m.send_time),
    };
  }

  // A message as GET /conversations writes it: ids and numbers as decimal strings.
  function messageFromJson(m) {
    return {
      session_type: Number(m.session_type), receiver_id: Number(m.receiver_id),
      sender_id: Number(m.sender_id), message_type: Number(m.message_type),
      text: String(m.content || ""), seq: Number(m.seq), send_time: Number(m.send_time),
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
    const conv = conversation(key);
    const mine = msg.sender_id === session.userId;
    if (!conv.last || msg.seq >= conv.last.seq) {
      conv.last = msg;
      conv.time = msg.send_time || Date.now();
    }
    if (mine) {
      conv.unread = 0; // sending marks the conversation read up to the sent message
      conv.read_seq = Math.max(conv.read_seq || 0, msg.seq);
    } else if (msg.seq > (conv.read_seq || 0) && !(key === current && pageSeen())) {
      conv.unread = (conv.unread || 0) + 1;
    }
    if (typing[key]) delete typing[key][msg.sender_id]; // the message ends the notice
    if (msg.message_type === T.Kind.MT_System) applyEvent(msg);
    needUser(msg.session_type === T.Session.ST_Group ? msg.sender_id : Number(key.slice(1)));
    if (msg.session_type === T.Session.ST_Group) needGroup(msg.receiver_id);
  }

  function emptyState() {
    return { seq: 0, messages: [], convs: {}, names: { users: {}, groups: {} }, seen: {}, left: {} };
  }

  function conversation(key) {
    if (!state.convs[key]) state.convs[key] = { unread: 0, read_seq: 0, time: 0, last: null };
    return state.convs[key];
  }

  // -- group events ----------------------------------------------------------

  function eventOf(msg) {
    try {
      const event = JSON.parse(msg.text);
      return event && typeof event === "object" ? event : {};
    } catch (e) {
      return {};
    }
  }

  function applyEvent(msg) {
    const event = eventOf(msg);
    const group = msg.receiver_id;
    const users = (event.user_ids || []).map(Number);
    users.forEach(needUser);
    if (event.event === "group_renamed" && event.name) state.names.groups[group] = String(event.name);
    if ((event.event === "members_removed" || event.event === "member_left") &&
        users.includes(session.userId)) {
      state.left[group] = true;
    }
    if (event.event === "members_added" && users.includes(session.userId)) delete state.left[group];
    if (panel && panel.id === group && !state.left[group]) loadPanel(group);
  }

  function eventText(msg) {
    const event = eventOf(msg);
    const who = (id) => (Number(id) === session.userId ? "you" : userName(Number(id)));
    const actor = event.actor_id !== undefined ? who(event.actor_id) : "someone";
    const users = (event.user_ids || []).map(who).join(", ");
    const Actor = actor.charAt(0).toUpperCase() + actor.slice(1);
    switch (event.event) {
      case "members_added": return Actor + " added " + users;
      case "members_removed": return Actor + " removed " + users;
      case "member_left":
        return Actor + " left" + (event.owner_id ? "; " + who(event.owner_id) + " is the owner now" : "");
      case "group_renamed": return Actor + " renamed the group to “" + (event.name || "") + "”";
      default: return "Group event: " + (event.event || msg.text);
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
    if (!listLoaded) loadConversations(); // caught up: the node's counts include it all
    if (buffer.size && state.seq > before) sync();
  }

  function acknowledgePushes(always) {
    if (!loggedIn || (state.seq <= pushAcked && !always)) return;
    pushAcked = state.seq;
    send(T.Cmd.CT_ACK, T.ACKMsg, { type: T.Ack.AT_Push, seq: state.seq });
  }

  // -- read positions and typing --------------------------------------------

  function onRead(read) {
    const readerId = num(read.reader_id);
    const peer = num(read.peer_id);
    const seq = num(read.seq);
    const key = (read.session_type === T.Session.ST_Group ? "g" : "u") + peer;
    if (readerId === session.userId) {
      // This page's own read, or one of the user's other devices: the badge clears.
      const conv = conversation(key);
      conv.read_seq = Math.max(conv.read_seq || 0, seq);
      if (!conv.last || seq >= conv.last.seq) conv.unread = 0;
      else loadConversations(); // read up to an older message: the node knows the count
    } else if (read.session_type === T.Session.ST_Single && readerId === peer) {
      // The peer has read this user's messages up to `seq` (in this user's list).
      state.seen[key] = Math.max(state.seen[key] || 0, seq);
    } else {
      return;
    }
    saveState();
    render();
  }

  function pageSeen() {
    return document.visibilityState === "visible";
  }

  // Tell the node (hence the user's other devices and the peer) what is read:
  // the open conversation, up to its newest message this page holds.
  function markRead() {
    if (!loggedIn || current === null || !pageSeen()) return;
    const conv = state.convs[current];
    let seq = conv && conv.last ? conv.last.seq : 0;
    for (const msg of state.messages) if (msg.seq > seq && conversationOf(msg) === current) seq = msg.seq;
    if (!seq || seq <= Math.max((conv && conv.read_seq) || 0, readSent[current] || 0)) {
      if (conv && conv.unread && seq && seq <= (conv.read_seq || 0)) conv.unread = 0;
      return;
    }
    readSent[current] = seq;
    if (conv) conv.unread = 0;
    send(T.Cmd.CT_Read, T.ReadMsg, {
      session_type: current[0] === "g" ? T.Session.ST_Group : T.Session.ST_Single,
      peer_id: Number(current.slice(1)), seq: seq,
    });
  }

  function onTyping(notice) {
    const key = (notice.session_type === T.Session.ST_Group ? "g" : "u") + num(notice.peer_id);
    const who = num(notice.sender_id);
    if (who === session.userId) return;
    needUser(who);
    typing[key] = typing[key] || {};
    typing[key][who] = Date.now() + TYPING_SHOW_MS;
    renderTyping();
    setTimeout(renderTyping, TYPING_SHOW_MS + 50);
  }

  function sayTyping() {
    if (!loggedIn || current === null || !$("text").value) return;
    if (current[0] === "g" && state.left[current.slice(1)]) return;
    const now = Date.now();
    if (now - (typingSent[current] || 0) < TYPING_SEND_MS) return;
    typingSent[current] = now;
    send(T.Cmd.CT_Typing, T.TypingMsg, {
      session_type: current[0] === "g" ? T.Session.ST_Group : T.Session.ST_Single,
      peer_id: Number(current.slice(1)),
    });
  }

  function renderTyping() {
    const line = $("typing");
    const now = Date.now();
    const who = [];
    for (const [id, until] of Object.entries((current && typing[current]) || {})) {
      if (until > now) who.push(userName(Number(id)));
    }
    if (!who.length) line.textContent = "";
    else if (who.length === 1) line.textContent = who[0] + " is typing…";
    else line.textContent = who.slice(0, -1).join(", ") + " and " + who[who.length - 1] + " are typing…";
  }

  // -- names -----------------------------------------------------------------

  function userName(id) {
    const name = state && state.names.users[id];
    if (name) return name;
    needUser(id);
    return "User " + id;
  }

  function groupName(id) {
    const name = state && state.names.groups[id];
    return name || "Group " + id;
  }

  function needUser(id) {
    if (!id || !state || state.names.users[id] || wantUsers.has(id)) return;
    wantUsers.add(id);
    if (!namesTimer) namesTimer = setTimeout(askNames, 20);
  }

  async function askNames() {
    namesTimer = null;
    const ids = Array.from(wantUsers).slice(0, 500);
    if (!ids.length || !session) return;
    const who = session;
    try {
      const data = await api("GET", "/user/info", ids.map((id) => ["ids", String(id)]), session.token);
      if (session !== who) return;
      for (const user of data.users || []) state.names.users[Number(user.id)] = user.nickname;
      // Unknown ids stay wanted no more: they are shown by id.
      ids.forEach((id) => { wantUsers.delete(id); if (!state.names.users[id]) state.names.users[id] = ""; });
      saveState();
      render();
    } catch (e) {
      ids.forEach((id) => wantUsers.delete(id)); // asked again when next shown
    }
    if (wantUsers.size && !namesTimer) namesTimer = setTimeout(askNames, 20);
  }

  let wantGroups = new Set();

  // A group's name: from /group/info while a member, else from the list.
  async function needGroup(id) {
    if (!state || state.names.groups[id] || wantGroups.has(id)) return;
    wantGroups.add(id);
    const who = session;
    try {
      const data = await api("GET", "/group/info", [["group_id", String(id)]], session.token);
      if (session !== who) return;
      state.names.groups[id] = data.name;
      saveState();
      render();
    } catch (e) {
      if (session === who && listLoaded) loadConversations();
    }
  }

  async function loadConversations() {
    if (!session) return;
    const who = session;
    listLoaded = true;
    let data;
    try {
      data = await api("GET", "/conversations", [["limit", "200"]], session.token);
    } catch (e) {
      listLoaded = false; // asked again after the next sync
      return;
    }
    if (session !== who) return;
    for (const item of data.conversations || []) {
      const group = Number(item.session_type) === T.Session.ST_Group;
      const peer = Number(item.peer_id);
      const key = (group ? "g" : "u") + peer;
      const conv = conversation(key);
      if (item.name) {
        if (group) state.names.groups[peer] = item.name;
        else state.names.users[peer] = item.name;
      }
      if (item.last_message) {
        const last = messageFromJson(item.last_message);
        if (!conv.last || last.seq >= conv.last.seq || !last.seq) {
          conv.last = last;
          conv.time = last.send_time;
        }
      }
      conv.read_seq = Math.max(conv.read_seq || 0, Number(item.read_seq || 0));
      conv.unread = key === current && pageSeen() ? 0 : Number(item.unread || 0);
      seenFrom(item);
    }
    saveState();
    render();
  }

  // A one-to-one entry's peer_read_seq: this user's own seq up to which the
  // peer has read, so "Seen" survives a reload or a new browser. Read
  // positions only move forward, as state.seen does.
  function seenFrom(item) {
    if (Number(item.session_type) !== T.Session.ST_Single || item.peer_read_seq === undefined) {
      return false;
    }
    const key = "u" + Number(item.peer_id);
    const seq = Number(item.peer_read_seq);
    if (seq <= (state.seen[key] || 0)) return false;
    state.seen[key] = seq;
    return true;
  }

  // Opening a one-to-one chat asks the node again: a receipt sent while this
  // page was offline is in the list, not in any notice.
  async function loadSeen(key) {
    const who = session;
    let data;
    try {
      data = await api("GET", "/conversations", [["limit", "200"]], session.token);
    } catch (e) {
      return; // the next open or list load tries again
    }
    if (session !== who) return;
    let changed = false;
    for (const item of data.conversations || []) changed = seenFrom(item) || changed;
    if (!changed) return;
    saveState();
    if (current === key) render();
  }

  // -- the group panel -------------------------------------------------------

  async function loadPanel(group) {
    try {
      const data = await api("GET", "/group/info", [["group_id", String(group)]], session.token);
      if (current !== "g" + group) return;
      panel = {
        id: group, name: data.name, owner_id: Number(data.owner_id), read_count: data.read_count,
        members: (data.members || []).map((m) => ({ id: Number(m.id), nickname: m.nickname })),
      };
      state.names.groups[group] = data.name;
      for (const m of panel.members) state.names.users[m.id] = m.nickname;
      delete state.left[group];
      saveState();
    } catch (e) {
      if (current !== "g" + group) return;
      panel = { id: group, members: [], error: e.message };
    }
    render();
  }

  function renderPanel() {
    const group = current && current[0] === "g" ? Number(current.slice(1)) : null;
    $("group-toggle").hidden = group === null;
    const open = group !== null && $("group-toggle").getAttribute("aria-expanded") === "true";
    $("group-panel").hidden = !open;
    if (!open) return;
    const left = !!state.left[group];
    const data = panel && panel.id === group ? panel : { members: [] };
    const owner = data.owner_id === session.userId;
    $("left-note").hidden = !left;
    $("panel-title").textContent = "Members" + (data.members.length ? " (" + data.members.length + ")" : "");
    const list = $("members");
    list.replaceChildren();
    for (const m of left ? [] : data.members) {
      const li = document.createElement("li");
      li.dataset.memberId = m.id;
      const name = document.createElement("span");
      name.className = "member-name";
      name.textContent = (m.nickname || "User " + m.id) + (m.id === session.userId ? " (you)" : "");
      li.append(name);
      if (m.id === data.owner_id) {
        const tag = document.createElement("span");
        tag.className = "hint";
        tag.textContent = "owner";
        li.append(tag);
      }
      if (owner && m.id !== session.userId) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "danger remove";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", "Remove " + (m.nickname || "user " + m.id));
        remove.addEventListener("click", () => groupCall("/group/members/remove", [["ids", String(m.id)]]));
        li.append(remove);
      }
      list.append(li);
    }
    const count = data.read_count;
    $("read-count").textContent = !left && typeof count === "number" && data.members.length
      ? "Latest message read by " + count + " of " + data.members.length : "";
    $("add-form").hidden = left;
    $("rename-form").hidden = left || !owner;
    $("leave").hidden = left;
    if (data.error && !left) $("panel-error").textContent = data.error;
  }

  async function groupCall(path, params) {
    const group = Number(current.slice(1));
    $("panel-error").textContent = "";
    try {
      await api("POST", path, [["group_id", String(group)]].concat(params), session.token);
      if (path === "/group/leave") {
        state.left[group] = true;
        saveState();
      }
      await loadPanel(group);
      return true;
    } catch (e) {
      $("panel-error").textContent = e.message;
      return false;
    }
  }

  async function onAddMember(event) {
    event.preventDefault();
    const phone = $("add-phone").value.trim();
    $("panel-error").textContent = "";
    try {
      const user = await findUser(phone);
      if (await groupCall("/group/members/add", [["ids", String(user.id)]])) $("add-phone").value = "";
    } catch (e) {
      $("panel-error").textContent = e.message;
    }
  }

  async function onRename(event) {
    event.preventDefault();
    const name = $("rename-name").value.trim();
    if (await groupCall("/group/update", [["name", name]])) {
      $("rename-name").value = "";
      state.names.groups[Number(current.slice(1))] = name;
      saveState();
      render();
    }
  }

  // -- view ------------------------------------------------------------------

  function conversationOf(msg) {
    if (msg.session_type === T.Session.ST_Group) return "g" + msg.receiver_id;
    return "u" + (msg.sender_id === session.userId ? msg.receiver_id : msg.sender_id);
  }

  function title(key) {
    const id = Number(key.slice(1));
    return key[0] === "g" ? groupName(id) : userName(id);
  }

  function open(key) {
    current = key;
    const conv = conversation(key);
    if (!conv.time) conv.time = Date.now(); // a new chat goes on top of the list
    conv.unread = 0;
    panel = null;
    $("group-toggle").setAttribute("aria-expanded", "false");
    $("panel-error").textContent = "";
    if (key[0] === "g" && !state.left[key.slice(1)]) loadPanel(Number(key.slice(1)));
    if (key[0] === "u") needUser(Number(key.slice(1)));
    if (key[0] === "u" && listLoaded) loadSeen(key); // else the list load does it
    history.replaceState(null, "", key === null ? location.pathname : "#" + key);
    saveState();
    render();
    $("text").focus();
  }

  function close() {
    current = null;
    panel = null;
    history.replaceState(null, "", location.pathname);
    render();
  }

  function timeOf(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function whenOf(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    if (d.toDateString() === new Date().toDateString()) return timeOf(ms);
    return d.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  function previewOf(msg) {
    if (!msg) return "";
    if (msg.message_type === T.Kind.MT_System) return eventText(msg);
    const text = msg.message_type && msg.message_type !== T.Kind.MT_Text ? "(attachment)" : msg.text;
    if (msg.sender_id === session.userId) return "You: " + text;
    if (msg.session_type === T.Session.ST_Group) return userName(msg.sender_id) + ": " + text;
    return text;
  }

  function messageItem(msg, note, seen) {
    const li = document.createElement("li");
    if (msg.message_type === T.Kind.MT_System) {
      li.className = "event";
      li.textContent = eventText(msg);
      if (msg.seq) li.dataset.seq = msg.seq;
      return li;
    }
    const mine = msg.sender_id === session.userId;
    li.className = "msg " + (mine ? "mine" : "theirs") + (note ? " pending" : "") + (seen ? " seen" : "");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = mine ? "You" : userName(msg.sender_id);
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
    if (seen === "last") {
      const mark = document.createElement("small");
      mark.className = "seen-mark";
      mark.textContent = "Seen";
      li.append(mark);
    }
    if (msg.seq) li.dataset.seq = msg.seq;
    return li;
  }

  function renderList() {
    const list = $("conversations");
    list.replaceChildren();
    const keys = Object.keys(state.convs).sort((a, b) => (state.convs[b].time || 0) - (state.convs[a].time || 0));
    for (const key of keys) {
      const conv = state.convs[key];
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.conversation = key;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = title(key);
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = whenOf(conv.last ? conv.last.send_time : 0);
      const preview = document.createElement("span");
      preview.className = "preview";
      preview.textContent = previewOf(conv.last);
      button.append(name, when, preview);
      if (key === current) button.setAttribute("aria-current", "true");
      if (conv.unread) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = conv.unread;
        badge.setAttribute("aria-label", conv.unread + " unread");
        button.append(badge);
      }
      button.addEventListener("click", () => open(key));
      li.append(button);
      list.append(li);
    }
  }

  function render() {
    if (!session || !state) return;
    markRead();
    showMe();
    renderList();
    $("chat").dataset.view = current === null ? "list" : "conversation";
    const log = $("messages");
    log.replaceChildren();
    const left = current !== null && current[0] === "g" && !!state.left[current.slice(1)];
    $("text").disabled = $("send").disabled = current === null || left;
    $("text").placeholder = left ? "You are no longer a member of this group" : "Write a message";
    renderPanel();
    renderTyping();
    if (current === null) {
      $("conv-title").textContent = "No conversation open";
      return;
    }
    $("conv-title").textContent = title(current);
    document.title = title(current) + " – GoChat";
    const seenUpTo = current[0] === "u" ? state.seen[current] || 0 : 0;
    const shown = state.messages.filter((msg) => conversationOf(msg) === current);
    let lastSeen = null;
    for (const msg of shown) {
      if (msg.sender_id === session.userId && msg.seq <= seenUpTo) lastSeen = msg;
    }
    for (const msg of shown) {
      const seen = msg.sender_id === session.userId && msg.seq <= seenUpTo;
      log.append(messageItem(msg, null, seen ? (msg === lastSeen ? "last" : true) : false));
    }
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

  function loadState() {
    const saved = load(stateKey(), null);
    if (!saved || !saved.convs) return emptyState(); // none, or an older page's shape
    const empty = emptyState();
    for (const key of Object.keys(empty)) if (saved[key] === undefined) saved[key] = empty[key];
    return saved;
  }

  function showMe() {
    const name = state.names.users[session.userId] || session.nickname;
    if (!$("nick").value && document.activeElement !== $("nick")) $("nick").placeholder = name || "";
    $("me").dataset.userId = session.userId;
    $("me").textContent = name ? "You are " + name : "You are user " + session.userId;
  }

  function start(newSession) {
    session = newSession;
    save("gochat:session", session);
    state = loadState();
    if (session.nickname) state.names.users[session.userId] = session.nickname;
    outbox = load(outboxKey(), []);
    buffer = new Map();
    pushAcked = 0;
    listLoaded = false;
    typing = {};
    wantUsers = new Set();
    wantGroups = new Set();
    const wanted = location.hash.slice(1);
    current = /^[ug][0-9]{1,19}$/.test(wanted) ? wanted : null;
    $("auth").hidden = true;
    $("chat").hidden = false;
    $("logout").hidden = false;
    $("me").hidden = false;
    needUser(session.userId);
    showMe();
    if (current) open(current);
    else render();
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
    current = null;
    localStorage.removeItem("gochat:session");
    history.replaceState(null, "", location.pathname);
    disconnect();
    $("auth").hidden = false;
    $("chat").hidden = true;
    $("logout").hidden = true;
    $("me").hidden = true;
    $("auth-error").textContent = reason || "";
    document.title = "GoChat";
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
      start({ token: data.token, userId: Number(data.id || data.user_id), nickname: register ? nickname : "" });
    } catch (e) {
      $("auth-error").textContent = (register ? "Could not register: " : "Could not log in: ") + e.message;
    }
  }

  // A user by phone number (the node never shows anyone's phone number back).
  async function findUser(phone) {
    if (!phone) throw new Error("Enter a phone number.");
    try {
      const user = await api("GET", "/user/search", [["phone_number", phone]], session.token);
      const id = Number(user.id);
      state.names.users[id] = user.nickname;
      return { id: id, nickname: user.nickname };
    } catch (e) {
      if (e.status === 404) throw new Error("Nobody has the phone number " + phone + ".");
      if (e.status === 429) throw new Error("Too many searches; try again in a minute.");
      throw e;
    }
  }

  async function onFind(event) {
    event.preventDefault();
    $("find-error").textContent = "";
    try {
      const user = await findUser($("find-phone").value.trim());
      $("find-phone").value = "";
      if (user.id === session.userId) {
        $("find-error").textContent = "That is your own number.";
        return;
      }
      open("u" + user.id);
    } catch (e) {
      $("find-error").textContent = e.message;
    }
  }

  async function onCreateGroup(event) {
    event.preventDefault();
    $("group-error").textContent = "";
    const phones = $("group-members").value.split(/[\s,;]+/).filter(Boolean);
    const name = $("group-name").value.trim();
    try {
      const ids = [];
      for (const phone of phones) ids.push((await findUser(phone)).id);
      const data = await api("POST", "/group/create",
        [["name", name]].concat(ids.map((id) => ["ids", String(id)])), session.token);
      $("group-name").value = "";
      $("group-members").value = "";
      state.names.groups[Number(data.id)] = name;
      open("g" + Number(data.id));
    } catch (e) {
      $("group-error").textContent = "Could not create the group: " + e.message;
    }
  }

  async function onNick(event) {
    event.preventDefault();
    const nickname = $("nick").value.trim();
    $("nick-error").textContent = "";
    try {
      await api("POST", "/user/update", [["nickname", nickname]], session.token);
      state.names.users[session.userId] = nickname;
      session.nickname = nickname;
      save("gochat:session", session);
      $("nick").value = "";
      saveState();
      render();
    } catch (e) {
      $("nick-error").textContent = "Could not change it: " + e.message;
    }
  }

  function onSend(event) {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim() || current === null) return;
    $("text").value = "";
    typingSent[current] = 0;
    queue({
      session_type: current[0] === "g" ? T.Session.ST_Group : T.Session.ST_Single,
      receiver_id: Number(current.slice(1)),
      text: text,
    });
  }

  function onToggleGroup() {
    const open = $("group-toggle").getAttribute("aria-expanded") !== "true";
    $("group-toggle").setAttribute("aria-expanded", open ? "true" : "false");
    if (open && current && current[0] === "g" && !state.left[current.slice(1)]) loadPanel(Number(current.slice(1)));
    render();
  }

  async function main() {
    T = await loadSchema();
    deviceId = await claimDevice();
    document.body.dataset.device = deviceId;
    $("auth-form").addEventListener("submit", onAuth);
    $("group-form").addEventListener("submit", onCreateGroup);
    $("find-form").addEventListener("submit", onFind);
    $("nick-form").addEventListener("submit", onNick);
    $("send-form").addEventListener("submit", onSend);
    $("text").addEventListener("input", sayTyping);
    $("back").addEventListener("click", close);
    $("group-toggle").addEventListener("click", onToggleGroup);
    $("add-form").addEventListener("submit", onAddMember);
    $("rename-form").addEventListener("submit", onRename);
    $("leave").addEventListener("click", () => groupCall("/group/leave", []).then(render));
    $("logout").addEventListener("click", () => logout("", true));
    window.addEventListener("online", () => { if (session && !ws) connect(); });
    document.addEventListener("visibilitychange", () => { if (session && state) render(); });
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
