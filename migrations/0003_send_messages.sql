-- Group commit: the relay stores the `message` requests that wait on one database worker
-- as one statement — one transaction, one WAL flush — and acknowledges none of them before
-- it has committed. This function does, for each send in order, what one send used to do
-- in six round trips: the checks of wire protocol §7/§10 in the contract's order, then seq
-- assignment and the insert under the channel's row lock.
--
-- Every input array has one element per send. One row comes back per send, in order
-- (`ord` is its 1-based position):
--   stored      seq, received_ms of the new row
--   duplicate   (sender, client_msg_id) already stored: first_channel, seq, received_ms of
--               the first send (the caller answers bad_request when first_channel differs)
--   not_member  the sender is not a member (or the channel does not exist)
--   too_large   octet_length(ciphertext) > p_max_bytes
--   key_expired key_id is not the channel's current unexpired key; current_key is it
--   bad_timestamp  |ts - p_now_s| > p_window
--   iv_reused   (key_id, iv) already stored
--   conflict    the insert met a unique row committed meanwhile by another transaction (a
--               send of the same client_msg_id on another channel): the caller looks again
-- A refused send takes no seq. No exception block: a batch stays one transaction without
-- subtransactions (ON CONFLICT DO NOTHING covers the race instead).
CREATE FUNCTION parley_send_messages(
    p_channel uuid[], p_sender uuid[], p_client_msg uuid[], p_key uuid[], p_iv bytea[], p_ciphertext bytea[],
    p_ts bigint[], p_now_s bigint, p_window bigint, p_max_bytes integer)
RETURNS TABLE (ord integer, outcome text, seq bigint, received_ms bigint, first_channel uuid, current_key uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_last bigint;
    v_key uuid;
    v_key_live boolean;
    v_received timestamptz;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_channel, 1), 0) LOOP
        ord := i;
        outcome := NULL; seq := NULL; received_ms := NULL; first_channel := NULL; current_key := NULL;

        -- The channel's lock first: seq assignment and every check below happen under it,
        -- so a rotation or membership change that committed earlier is seen.
        SELECT c.last_seq, c.current_key_id INTO v_last, v_key FROM channels c WHERE c.id = p_channel[i] FOR UPDATE;
        IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM channel_members m
                                    WHERE m.channel_id = p_channel[i] AND m.user_id = p_sender[i]) THEN
            outcome := 'not_member';
            RETURN NEXT;
            CONTINUE;
        END IF;

        SELECT d.channel_id, d.seq, (extract(epoch FROM d.received_at) * 1000)::bigint
          INTO first_channel, seq, received_ms
          FROM messages d WHERE d.sender_id = p_sender[i] AND d.client_msg_id = p_client_msg[i];
        IF FOUND THEN
            outcome := 'duplicate';
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF octet_length(p_ciphertext[i]) > p_max_bytes THEN
            outcome := 'too_large';
            RETURN NEXT;
            CONTINUE;
        END IF;

        SELECT k.expires_at > clock_timestamp() INTO v_key_live FROM channel_keys k WHERE k.id = v_key;
        IF v_key IS NULL OR v_key IS DISTINCT FROM p_key[i] OR NOT coalesce(v_key_live, false) THEN
            outcome := 'key_expired';
            current_key := v_key;
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF abs(p_ts[i] - p_now_s) > p_window THEN
            outcome := 'bad_timestamp';
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF EXISTS (SELECT 1 FROM messages d WHERE d.key_id = p_key[i] AND d.iv = p_iv[i]) THEN
            outcome := 'iv_reused';
            RETURN NEXT;
            CONTINUE;
        END IF;

        INSERT INTO messages (channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts)
        VALUES (p_channel[i], v_last + 1, p_sender[i], p_client_msg[i], p_key[i], p_iv[i], p_ciphertext[i], p_ts[i])
        ON CONFLICT DO NOTHING
        RETURNING messages.received_at INTO v_received;
        IF NOT FOUND THEN
            outcome := 'conflict';
            RETURN NEXT;
            CONTINUE;
        END IF;
        UPDATE channels SET last_seq = v_last + 1 WHERE id = p_channel[i];

        outcome := 'stored';
        seq := v_last + 1;
        received_ms := (extract(epoch FROM v_received) * 1000)::bigint;
        RETURN NEXT;
    END LOOP;
END;
$$;
