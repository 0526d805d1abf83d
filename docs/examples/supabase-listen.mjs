// supabase-js against Nexus Relay: the same code as against Supabase, another URL.
//
//   SUPABASE_URL=http://127.0.0.1:8765 SUPABASE_ANON_KEY=... USER_TOKEN=... \
//     node docs/examples/supabase-listen.mjs
//
// SUPABASE_URL is the relay (http:// for ws://, https:// for wss://); the anon key
// and a user's token come from the portal's /nexus/api/realtime-config once signed
// in (`supabase.anon_key`, `token`), or from `make demo`'s banner (the anon key).
// It prints each change of nexus_notifications that the user may see, one JSON
// line each; with EXIT_AFTER=n it exits after n of them.
import { createClient } from '@supabase/supabase-js'
import WebSocket from 'ws' // Node 20 has no global WebSocket; Node 22 and browsers do

const { SUPABASE_URL, SUPABASE_ANON_KEY, USER_TOKEN } = process.env
const exitAfter = Number(process.env.EXIT_AFTER || 0)

const supabase = createClient(SUPABASE_URL, SUPABASE_ANON_KEY, {
  realtime: { transport: WebSocket },
  accessToken: async () => USER_TOKEN, // the signed-in user's JWT, as with Supabase Auth
})

let seen = 0
supabase
  .channel('inbox')
  .on('postgres_changes', { event: '*', schema: 'public', table: 'nexus_notifications' }, (change) => {
    console.log(JSON.stringify({ type: change.eventType, new: change.new, old: change.old }))
    if (exitAfter && ++seen >= exitAfter) process.exit(0)
  })
  .subscribe((status, error) => {
    console.log(JSON.stringify({ status, error: error ? error.message : null }))
  })
