// Xaeroflux chat: one static page over the client bundle (`dist/xaeroflux-client.js`).
//
// The key is a hex seed in localStorage. A group comes from the URL hash (`#gid=…`) or is created here. Messages
// arrive over `subscribe(gid, {transport: "sse"})`; each one is stored in localStorage with the cursor after it (in
// one write), so a reload shows what was seen and resumes the stream right after it: no duplicate, no gap.
import {
  ACTION_ADD,
  ACTION_MAKE_ADMIN,
  ACTION_REMOVE,
  ACTION_REVOKE_ADMIN,
  decodeMembership,
  exportSeedHex,
  generateKeyPair,
  keyPairFromHex,
  readText,
  textPayload,
  toHex,
  XfClient,
} from "./xaeroflux-client.js";

/** Messages kept per group in localStorage (the oldest go first). */
const MESSAGES_MAX = 500;
/** Wait before asking again for a group we cannot read yet (a closed group we are not a member of). */
const NO_ACCESS_RETRY_MS = 3000;
const KIND_TEXT = 16;
const KEY_ITEM = "xf-chat:key";
const groupItem = (gid) => `xf-chat:group:${gid}`;

const $ = (id) => document.getElementById(id);
const nodeUrl = new URLSearchParams(location.search).get("node") || location.origin;

function info(text) {
  $("info").textContent = text;
}

function setStatus(state, text = state) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

async function loadKey() {
  const hex = localStorage.getItem(KEY_ITEM);
  if (hex) {
    try {
      return await keyPairFromHex(hex);
    } catch { /* not a seed: make a new key */ }
  }
  const key = await generateKeyPair();
  localStorage.setItem(KEY_ITEM, exportSeedHex(key));
  return key;
}

function gidFromHash() {
  const m = /(?:^#|&)gid=([0-9a-fA-F]{64})(?:&|$)/.exec(location.hash);
  return m ? m[1].toLowerCase() : null;
}

const byTsId = (a, b) => a.ts - b.ts || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** `{cursor, messages, policy?, name?}` of a group, as last stored. */
function loadGroup(gid) {
  try {
    const s = JSON.parse(localStorage.getItem(groupItem(gid)) ?? "null");
    if (s && Array.isArray(s.messages)) return s;
  } catch { /* unreadable: start over */ }
  return { cursor: null, messages: [] };
}

function saveGroup(gid, state) {
  state.messages.sort(byTsId);
  if (state.messages.length > MESSAGES_MAX) state.messages.splice(0, state.messages.length - MESSAGES_MAX);
  try {
    localStorage.setItem(groupItem(gid), JSON.stringify(state));
  } catch (e) {
    info(`Cannot store messages: ${e.message}`);
  }
}

const ACTIONS = {
  [ACTION_ADD]: "added",
  [ACTION_REMOVE]: "removed",
  [ACTION_MAKE_ADMIN]: "made admin",
  [ACTION_REVOKE_ADMIN]: "revoked admin of",
};

/** What the page shows of an event: a text message, a note for the manifest and membership changes, else null. */
function entryOf(ev) {
  const base = { id: ev.id, author: ev.author, ts: ev.ts, kind: ev.kind };
  try {
    if (ev.kind === KIND_TEXT) return { ...base, text: readText(ev.payload) };
    if (ev.kind === 0) return { ...base, text: "created the group" };
    if (ev.kind === 1) {
      const m = decodeMembership(ev.payload);
      return { ...base, text: `${ACTIONS[m.action] ?? "changed"} ${toHex(m.member).slice(0, 8)}` };
    }
  } catch { /* not valid UTF-8 or membership: not shown */ }
  return null;
}

function timeOf(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

class MessageList {
  #ul = $("messages");
  #ids = new Set();
  #me;

  constructor(me) {
    this.#me = me;
  }

  has(id) {
    return this.#ids.has(id);
  }

  /** Show an entry in (ts, id) order; false if it is already shown. */
  add(m) {
    if (this.#ids.has(m.id)) return false;
    this.#ids.add(m.id);
    const li = document.createElement("li");
    li.className = m.kind === KIND_TEXT ? "msg" : "note";
    if (m.author === this.#me) li.classList.add("mine");
    li.dataset.id = m.id;
    li.dataset.ts = String(m.ts);
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = timeOf(m.ts);
    time.title = new Date(m.ts).toISOString();
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m.author.slice(0, 8);
    who.title = m.author === this.#me ? `${m.author} (you)` : m.author;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = m.text;
    li.append(time, who, text);

    const ul = this.#ul;
    const atBottom = ul.scrollHeight - ul.scrollTop - ul.clientHeight < 40;
    let next = null;
    for (let el = ul.lastElementChild; el; el = el.previousElementSibling) {
      if (byTsId({ ts: Number(el.dataset.ts), id: el.dataset.id }, m) <= 0) break;
      next = el;
    }
    ul.insertBefore(li, next);
    if (atBottom || m.author === this.#me) ul.scrollTop = ul.scrollHeight;
    return true;
  }
}

function showSetup(client) {
  $("setup").hidden = false;
  setStatus("idle", "no group");
  $("create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("create").disabled = true;
    try {
      const name = $("group-name-input").value.trim() || "chat";
      const policy = $("policy").value === "closed" ? "closed" : "open";
      const { gid } = await client.createGroup({ name, policy });
      saveGroup(gid, { cursor: null, messages: [], name, policy });
      location.hash = `gid=${gid}`;
    } catch (err) {
      info(`Cannot create the group: ${err.message}`);
      $("create").disabled = false;
    }
  });
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const gid = $("join-gid").value.trim().toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(gid)) return info("A group id is 64 hex digits");
    location.hash = `gid=${gid}`;
  });
}

function showChat(client, gid) {
  const me = toHex(client.key.publicKey);
  const state = loadGroup(gid);
  const list = new MessageList(me);
  for (const m of state.messages) list.add(m);

  const link = `${location.origin}${location.pathname}${location.search}#gid=${gid}`;
  $("chat").hidden = false;
  $("gid").value = gid;
  $("link").href = link;
  $("link").textContent = link;
  $("copy-link").addEventListener("click", () => copy(link, "Link copied"));
  $("new-group").href = `${location.pathname}${location.search}`;
  if (state.name) $("group-name").textContent = `· ${state.name}`;

  /** Name, policy and my role, from the node; shows "Add member" to the owner and admins of a closed group. */
  async function refreshInfo() {
    const [groups, members] = await Promise.allSettled([client.groups(), client.members(gid)]);
    const g = groups.status === "fulfilled" ? groups.value.find((x) => x.id === gid) : undefined;
    if (g) Object.assign(state, { name: g.name, policy: g.policy });
    if (state.name) $("group-name").textContent = `· ${state.name}${state.policy === "closed" ? " (closed)" : ""}`;
    const role = members.status === "fulfilled"
      ? (members.value.owner === me ? "owner" : members.value.members.find((m) => m.key === me)?.role)
      : undefined;
    $("add-form").hidden = !(state.policy === "closed" && (role === "owner" || role === "admin"));
  }

  let sub = null;
  const open = () => {
    setStatus("connecting", "connecting…");
    sub = client.subscribe(gid, {
      transport: "sse",
      ...(state.cursor ? { cursor: state.cursor } : {}),
      onEvent(ev) {
        const m = entryOf(ev);
        if (m && list.add(m)) state.messages.push(m);
        // `ev.cursor` is what `sub.cursor` becomes once this returns: stored with the message in one write.
        state.cursor = ev.cursor;
        saveGroup(gid, state);
      },
      onReady() {
        if (sub.cursor) state.cursor = sub.cursor;
        saveGroup(gid, state);
        setStatus("live");
        info("");
        refreshInfo();
      },
      onError(err) {
        if (err.code !== "UNKNOWN_GROUP") setStatus("reconnecting");
      },
    });
    const mine = sub;
    mine.closed.then((err) => {
      if (!err || sub !== mine) return;
      if (err.code === "UNKNOWN_GROUP" || err.code === "NOT_FOUND") {
        setStatus("no access");
        info(`No such group on this node, or a closed one: ask its owner to add your key ${me.slice(0, 8)}…`);
      } else {
        setStatus("error", `error: ${err.code ?? err.message}`);
      }
      setTimeout(open, NO_ACCESS_RETRY_MS);
    });
  };
  open();
  refreshInfo();
  addEventListener("pagehide", () => {
    if (sub?.cursor) state.cursor = sub.cursor;
    saveGroup(gid, state);
    sub?.close();
  });

  $("send-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text) return;
    $("send").disabled = true;
    try {
      const { event } = await client.send(gid, { kind: KIND_TEXT, payload: textPayload(text) });
      input.value = "";
      // Shown at once; the stream brings it again (with its cursor) and the list skips it.
      const m = entryOf(event);
      if (m && list.add(m)) {
        state.messages.push(m);
        saveGroup(gid, state);
      }
    } catch (err) {
      info(`Cannot send: ${err.message}`);
    } finally {
      $("send").disabled = false;
      input.focus();
    }
  });

  $("add-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("member-key").value.trim().toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(key)) return info("A public key is 64 hex digits");
    $("add").disabled = true;
    try {
      await client.addMember(gid, key);
      $("member-key").value = "";
      info(`Added ${key.slice(0, 8)}…: send them the link`);
    } catch (err) {
      info(`Cannot add ${key.slice(0, 8)}…: ${err.message}`);
    } finally {
      $("add").disabled = false;
    }
  });
}

async function copy(text, done) {
  try {
    await navigator.clipboard.writeText(text);
    info(done);
  } catch {
    info(text);
  }
}

async function main() {
  $("node-url").textContent = nodeUrl;
  const key = await loadKey();
  const me = toHex(key.publicKey);
  $("my-key").value = me;
  $("copy-key").addEventListener("click", () => copy(me, "Public key copied"));
  const client = new XfClient(nodeUrl, { key });
  const gid = gidFromHash();
  // Another group in the hash (a pasted link, "Join", a new group): start over with it.
  addEventListener("hashchange", () => gidFromHash() !== gid && location.reload());
  if (gid) showChat(client, gid);
  else showSetup(client);
  document.body.dataset.ready = "true";
}

main().catch((e) => {
  setStatus("error");
  info(`Cannot start: ${e.message}`);
});
