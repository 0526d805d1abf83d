-- Start logging the changes of the to-dos for the relay (after `nexus-relay
-- install`). Run as a role that owns the table and is a member of the owner of
-- schema relay (todo_owner in the README); publishing again is harmless.
SET client_min_messages = warning;  -- the first time, no old trigger to drop: no notice
SELECT relay.publish('public.todos');
