// A driver of the real Supabase JavaScript clients, for the tests of the relay's
// Supabase-compatible endpoint (tests/relay/supabase/harness.py starts it).
//
// One process holds one client: @supabase/realtime-js's RealtimeClient, or
// @supabase/supabase-js's createClient() and its .realtime, both with the `ws`
// package as transport (Node 20 has no global WebSocket, and the clients refuse to
// connect without one). The test writes one JSON command a line on stdin:
//
//   {"id": 1, "cmd": "connect", "url": "ws://127.0.0.1:8765/realtime/v1", "apikey": "...",
//    "vsn": "2.0.0", "client": "realtime-js", "accessToken": "..."}
//
// and reads one JSON object a line on stdout: the command's result
//
//   {"type": "result", "id": 1, "ok": true, "value": ...}   or   "ok": false, "error": "..."
//
// and, as they happen, every event the client library reports, each naming its
// channel by the key the test gave it (`channel` command):
//
//   {"type": "status", "channel": k, "status": "SUBSCRIBED"|"CHANNEL_ERROR"|"TIMED_OUT"|"CLOSED",
//    "error": message or null}
//   {"type": "postgres_changes", "channel": k, "binding": label, "payload": <what the callback got>}
//   {"type": "broadcast", "channel": k, "binding": label, "payload": <what the callback got>}
//   {"type": "presence", "channel": k, "event": "sync"|"join"|"leave", "key"?, "newPresences"?,
//    "leftPresences"?, "currentPresences"?, "state": channel.presenceState()}
//   {"type": "system", "channel": k, "payload": ...}
//   {"type": "socket", "state": "open"|"close"|"error", "code"?, "reason"?}
//   {"type": "heartbeat", "status": "sent"|"ok"|"error"|"timeout"|..., "latency"?}
//   {"type": "token_requested", "token": ...}      the accessToken callback was called
//   {"type": "log", "level": ..., "message": ...}  an uncaught error, a bad command line
//
// Nothing else is written to stdout: console.log goes to stderr.

import readline from 'node:readline'
import { RealtimeClient } from '@supabase/realtime-js'
import { createClient } from '@supabase/supabase-js'
import WebSocket from 'ws'

console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

function message(error) {
  if (error === undefined || error === null) return null
  if (error instanceof Error) return error.message
  return typeof error === 'string' ? error : JSON.stringify(error)
}

process.on('uncaughtException', (error) => {
  emit({ type: 'log', level: 'error', message: `uncaught: ${error && error.stack}` })
})
process.on('unhandledRejection', (error) => {
  emit({ type: 'log', level: 'error', message: `unhandled rejection: ${error && error.stack}` })
})

const state = {
  supabase: null, // the supabase-js client, when connect said client: "supabase-js"
  realtime: null, // the RealtimeClient (supabase.realtime for supabase-js)
  token: null, // what the accessToken callback returns (set_token changes it)
  channels: new Map(), // key -> RealtimeChannel
}

function realtime() {
  if (!state.realtime) throw new Error('not connected: send connect first')
  return state.realtime
}

function channelOf(args) {
  const channel = state.channels.get(args.channel)
  if (!channel) throw new Error(`no channel ${JSON.stringify(args.channel)}`)
  return channel
}

// Options of RealtimeClient that a test may set, as JSON. reconnectAfterMs is a
// list of delays (the last one repeats), the client's being a function.
function realtimeOptions(args) {
  const options = { transport: WebSocket }
  if (args.vsn) options.vsn = args.vsn
  for (const name of ['timeout', 'heartbeatIntervalMs', 'logLevel']) {
    if (args[name] !== undefined && args[name] !== null) options[name] = args[name]
  }
  if (Array.isArray(args.reconnectAfterMs) && args.reconnectAfterMs.length) {
    const delays = args.reconnectAfterMs
    options.reconnectAfterMs = (tries) => delays[Math.min(tries, delays.length) - 1]
  }
  options.heartbeatCallback = (status, latency) => {
    emit({ type: 'heartbeat', status, latency: latency ?? null })
  }
  if (args.params) options.params = { ...args.params }
  return options
}

function tokenCallback() {
  return async () => {
    emit({ type: 'token_requested', token: state.token })
    return state.token
  }
}

function watchSocket(client) {
  // The socket's own events (open, close with its code, error): the library's
  // adapter exposes Phoenix's hooks; they are what a reconnection test waits for.
  const adapter = client.socketAdapter
  if (!adapter) return
  adapter.onOpen(() => emit({ type: 'socket', state: 'open' }))
  adapter.onClose((event) =>
    emit({
      type: 'socket',
      state: 'close',
      code: event && event.code !== undefined ? event.code : null,
      reason: event && event.reason !== undefined ? String(event.reason) : null,
    }),
  )
  adapter.onError((error) =>
    emit({ type: 'socket', state: 'error', error: message(error?.message ?? String(error)) }),
  )
}

const commands = {
  // {url, apikey, vsn?, client: "realtime-js"|"supabase-js", accessToken?, lazyToken?,
  //  timeout?, heartbeatIntervalMs?, reconnectAfterMs?: [ms...], logLevel?, params?, open?}
  // realtime-js: url is the endpoint (…/realtime/v1); the client appends /websocket.
  // supabase-js: url is the project URL (http://host:port); the client adds /realtime/v1.
  // With accessToken, the client gets a callback returning the current token
  // (set_token changes it), as apps give one to supabase-js; without it,
  // realtime-js sends no token and supabase-js sends the apikey.
  // realtime-js alone asks the callback only once the socket is open, after the
  // first phx_join has been queued: that join goes without access_token, and
  // since the value then does not change, no access_token push follows (seen with
  // 2.119.1). So connect calls setAuth() at once, as supabase-js does when it is
  // made; lazyToken: true leaves that out, to show the race.
  async connect(args) {
    if (state.realtime) throw new Error('already connected')
    const kind = args.client || 'realtime-js'
    if (args.accessToken !== undefined && args.accessToken !== null) state.token = args.accessToken
    const hasToken = args.accessToken !== undefined && args.accessToken !== null
    if (kind === 'realtime-js') {
      const options = realtimeOptions(args)
      options.params = { ...(options.params || {}), apikey: args.apikey }
      if (hasToken) options.accessToken = tokenCallback()
      state.realtime = new RealtimeClient(args.url, options)
      if (hasToken && !args.lazyToken) await state.realtime.setAuth()
    } else if (kind === 'supabase-js') {
      const options = {
        realtime: realtimeOptions(args),
        auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      }
      if (hasToken) {
        options.accessToken = tokenCallback()
        delete options.auth
      }
      state.supabase = createClient(args.url, args.apikey, options)
      state.realtime = state.supabase.realtime
      // createClient starts setAuth(await accessToken()) itself, without waiting for it.
      if (hasToken && !args.lazyToken) await state.realtime.setAuth()
    } else {
      throw new Error(`unknown client ${JSON.stringify(kind)}`)
    }
    watchSocket(state.realtime)
    if (args.open) state.realtime.connect() // else the first subscribe opens the socket
    return { endpoint: state.realtime.endpointURL(), vsn: state.realtime.vsn }
  },

  // {channel: name, key?, config?}: client.channel(name, {config}); key (default: the
  // name) is how later commands and events name it.
  async channel(args) {
    const key = args.key ?? args.channel
    if (state.channels.has(key)) throw new Error(`channel ${JSON.stringify(key)} exists`)
    const params = args.config ? { config: args.config } : undefined
    const client = state.supabase || realtime()
    state.channels.set(key, client.channel(args.channel, params))
    return { topic: state.channels.get(key).topic }
  },

  // {channel, event, schema?, table?, filter?, select?, label?}: only the keys given
  // are passed to .on(), so that a test can check the echo of exactly what was sent.
  async on_postgres_changes(args) {
    const channel = channelOf(args)
    const filter = { event: args.event }
    for (const name of ['schema', 'table', 'filter', 'select']) {
      if (args[name] !== undefined) filter[name] = args[name]
    }
    const label = args.label ?? null
    channel.on('postgres_changes', filter, (payload) =>
      emit({ type: 'postgres_changes', channel: args.channel, binding: label, payload }),
    )
    return null
  },

  // {channel, event, label?}
  async on_broadcast(args) {
    const channel = channelOf(args)
    const label = args.label ?? null
    channel.on('broadcast', { event: args.event }, (payload) =>
      emit({ type: 'broadcast', channel: args.channel, binding: label, payload }),
    )
    return null
  },

  // {channel}: sync, join and leave listeners (which also enable presence).
  async on_presence(args) {
    const channel = channelOf(args)
    const key = args.channel
    channel
      .on('presence', { event: 'sync' }, () =>
        emit({ type: 'presence', channel: key, event: 'sync', state: channel.presenceState() }),
      )
      .on('presence', { event: 'join' }, ({ key: presenceKey, newPresences, currentPresences }) =>
        emit({
          type: 'presence',
          channel: key,
          event: 'join',
          key: presenceKey,
          newPresences,
          currentPresences,
          state: channel.presenceState(),
        }),
      )
      .on('presence', { event: 'leave' }, ({ key: presenceKey, leftPresences, currentPresences }) =>
        emit({
          type: 'presence',
          channel: key,
          event: 'leave',
          key: presenceKey,
          leftPresences,
          currentPresences,
          state: channel.presenceState(),
        }),
      )
    return null
  },

  // {channel, timeout?}: the statuses come as events; the result only says it was called.
  // The channel's `system` messages are reported too, from here on.
  async subscribe(args) {
    const channel = channelOf(args)
    channel.on('system', {}, (payload) => emit({ type: 'system', channel: args.channel, payload }))
    const callback = (status, error) =>
      emit({ type: 'status', channel: args.channel, status, error: message(error) })
    if (args.timeout) channel.subscribe(callback, args.timeout)
    else channel.subscribe(callback)
    return null
  },

  // {channel, event, payload, opts?}: what send() resolves to: "ok", "timed out", "error".
  async send_broadcast(args) {
    const channel = channelOf(args)
    return await channel.send(
      { type: 'broadcast', event: args.event, payload: args.payload },
      args.opts || {},
    )
  },

  // {channel, payload}: what track() resolves to.
  async track(args) {
    return await channelOf(args).track(args.payload)
  },

  // {channel}
  async untrack(args) {
    return await channelOf(args).untrack()
  },

  // {channel}: channel.presenceState() now.
  async presence_state(args) {
    return channelOf(args).presenceState()
  },

  // {channel}: the channel's state ("joined", "errored"...).
  async channel_state(args) {
    return channelOf(args).state
  },

  // {token}: realtime.setAuth(token), the app's explicit token; null: back to the
  // accessToken callback (or the token it had). The callback returns it from now
  // on too, as an app's token source would: realtime-js asks the callback again
  // after each join, and would push the old token back otherwise.
  async set_auth(args) {
    if (args.token) state.token = args.token
    await realtime().setAuth(args.token ?? null)
    return realtime().accessTokenValue
  },

  // {token, refresh?}: what the accessToken callback returns from now on (the
  // client asks it on every heartbeat); refresh: ask it at once (setAuth()).
  async set_token(args) {
    state.token = args.token
    if (args.refresh) await realtime().setAuth()
    return realtime().accessTokenValue
  },

  // {channel, remove?}: channel.unsubscribe(), or with remove, client.removeChannel();
  // what it resolves to.
  async unsubscribe(args) {
    const channel = channelOf(args)
    const client = state.supabase || realtime()
    const result = args.remove ? await client.removeChannel(channel) : await channel.unsubscribe()
    if (args.remove) state.channels.delete(args.channel)
    return result
  },

  // {}: the socket's state ("open", "closed"...).
  async connection_state() {
    return realtime().connectionState()
  },

  // {code?, reason?}: realtime.disconnect(); the channels stay known to the driver.
  async disconnect(args) {
    if (!state.realtime) return null
    return await state.realtime.disconnect(args.code, args.reason)
  },

  // {}: disconnect, answer, then exit.
  async exit() {
    if (state.realtime) {
      await Promise.race([
        state.realtime.disconnect(),
        new Promise((resolve) => setTimeout(resolve, 1000)),
      ])
    }
    setImmediate(() => process.exit(0))
    return null
  },
}

async function run(line) {
  let command
  try {
    command = JSON.parse(line)
  } catch (error) {
    emit({ type: 'log', level: 'error', message: `not JSON: ${line}` })
    return
  }
  const { id, cmd, ...args } = command
  const handler = Object.hasOwn(commands, cmd) ? commands[cmd] : null
  if (!handler) {
    emit({ type: 'result', id, ok: false, error: `unknown command ${JSON.stringify(cmd)}` })
    return
  }
  try {
    const value = await handler(args)
    emit({ type: 'result', id, ok: true, value: value === undefined ? null : value })
  } catch (error) {
    emit({ type: 'result', id, ok: false, error: message(error) })
  }
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
input.on('line', (line) => {
  if (line.trim()) run(line)
})
// The test process gone (stdin closed): go too, without waiting for timers.
input.on('close', () => process.exit(0))
emit({ type: 'ready', node: process.version })
