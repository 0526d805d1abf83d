"""The relay's core: changes in, frames out, without I/O.

Nothing here imports asyncio, psycopg, websockets, starlette or uvicorn (a test
walks this folder's imports): the shells in ``relay/`` feed the core data and
the time, and move what it decides to the world. Inside, from the bottom up:

- ``types``, ``errors``, ``truth``: the vocabulary (rows, ids, error codes,
  SQL's three-valued logic);
- ``tables``, ``changes``: what is published, and a change of a row;
- ``expressions``, ``policy``, ``filters``, ``tokens``: who may see which row,
  what a subscriber asked for, and who a token speaks for;
- ``protocol``: frames in and out of the wire protocol;
- ``subscription``, ``index``: one subscription and what it receives of a
  change; the index from a change to the subscriptions that could see it;
- ``positions``, ``resume``, ``history``: where a change is in the stream, the
  proof that a subscriber may resume, and the recent past;
- ``limits``, ``stats``, ``connections``, ``session``, ``fanout``: one
  connection's protocol state, and the hub that feeds them all;
- ``rates``, ``topics``, ``presence``, ``peers``: broadcast and presence
  (who is in which topic, who is present, the diffs), and the events relays
  share about them;
- ``explain``: the decisions for one user and one row, step by step, taken
  with the functions above (``nexus-relay explain``).
"""
