-- A challenge belongs to the connection that asked for it (wire protocol §10): an answer
-- from any other connection fails without using the challenge up. The tag names the
-- connection as "<node id>/<connection number>", unique across relay processes.
ALTER TABLE challenges ADD COLUMN owner_tag text NOT NULL DEFAULT '';
