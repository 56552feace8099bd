-- Several relay nodes on one database: every commit that other nodes must fan out is
-- announced with NOTIFY on `parley_events`, inside the committing transaction — so the
-- announcement goes out exactly when (and only if) the commit does, and listeners get
-- announcements in commit order. Payloads carry ids and seq ranges only, never ciphertext
-- (docs/protocol.md, "Several nodes"):
--   m <node> <channel>:<first>-<last> ...            messages stored by one group commit
--   k <node> <channel> <key_id> <at_seq>             a key record
--   v <node> <channel> <version> <at_seq> <user|-> <added|removed> <by>   a membership change
-- `<node>` is the announcing relay's id, so a node skips its own announcements (its local
-- subscribers are served straight from the commit). `<at_seq>` is the channel's last_seq
-- when the record committed: a listener delivers it after that message and before the next.

-- Where each membership change and key record sits among the channel's messages (the channel's last_seq
-- when it committed), so a node that reads it late still sends it in its place. Null for
-- changes stored before this migration.
ALTER TABLE membership_statements ADD COLUMN at_seq bigint;
ALTER TABLE channel_keys ADD COLUMN at_seq bigint;
-- The membership version in force at a message: the newest change behind an earlier seq,
-- one probe of this index per message read for another node.
CREATE INDEX membership_statements_at_seq ON membership_statements (channel_id, at_seq, version);

-- A batch's stored sends, one item per channel (a batch's seqs of one channel are
-- consecutive: it holds the channel's row lock until it commits); several notifications
-- when the items would pass NOTIFY's 8000-byte payload limit.
CREATE FUNCTION parley_announce_messages(p_node uuid, p_channel uuid[], p_seq bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_prefix text := 'm ' || p_node::text;
    v_payload text := '';
    v_item text;
BEGIN
    FOR v_item IN
        SELECT c::text || ':' || min(s) || '-' || max(s) FROM unnest(p_channel, p_seq) AS u (c, s) GROUP BY c
    LOOP
        IF length(v_payload) + length(v_item) > 7800 THEN
            PERFORM pg_notify('parley_events', v_prefix || v_payload);
            v_payload := '';
        END IF;
        v_payload := v_payload || ' ' || v_item;
    END LOOP;
    IF v_payload <> '' THEN
        PERFORM pg_notify('parley_events', v_prefix || v_payload);
    END IF;
END;
$$;

-- parley_send_messages (0003) with the announcement of what it stored, in the same
-- statement and so the same transaction, and each stored send's membership version (read
-- under the channel's row lock the batch holds, so it is the one in force at the commit):
-- a node holds a message back until it has sent the membership changes before it. The
-- 10-argument form stays for nodes of the previous version during a rolling upgrade.
CREATE FUNCTION parley_send_messages(
    p_node uuid, p_channel uuid[], p_sender uuid[], p_client_msg uuid[], p_key uuid[], p_iv bytea[],
    p_ciphertext bytea[], p_ts bigint[], p_now_s bigint, p_window bigint, p_max_bytes integer)
RETURNS TABLE (ord integer, outcome text, seq bigint, received_ms bigint, first_channel uuid, current_key uuid,
               membership_version integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_row record;
    v_channels uuid[] := '{}';
    v_seqs bigint[] := '{}';
BEGIN
    FOR v_row IN
        SELECT * FROM parley_send_messages(p_channel, p_sender, p_client_msg, p_key, p_iv, p_ciphertext,
                                           p_ts, p_now_s, p_window, p_max_bytes)
    LOOP
        ord := v_row.ord; outcome := v_row.outcome; seq := v_row.seq; received_ms := v_row.received_ms;
        first_channel := v_row.first_channel; current_key := v_row.current_key; membership_version := NULL;
        IF v_row.outcome = 'stored' THEN
            SELECT c.membership_version INTO membership_version FROM channels c WHERE c.id = p_channel[v_row.ord];
            v_channels := v_channels || p_channel[v_row.ord];
            v_seqs := v_seqs || v_row.seq;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF cardinality(v_seqs) > 0 THEN
        PERFORM parley_announce_messages(p_node, v_channels, v_seqs);
    END IF;
END;
$$;
