-- Parley schema v1: accounts, channels with signed membership, channel keys, messages.
--
-- The relay stores only what the wire contract lets it see: public keys, hashes of
-- secrets (passkeys, session tokens, challenge answers), signed membership statements,
-- RSA-OAEP-wrapped channel keys and AES-GCM ciphertext. Server times are timestamptz
-- here and unix milliseconds on the wire.

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    username        text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9_.-]{3,32}$'),
    public_key      bytea NOT NULL,                          -- SPKI DER
    key_fingerprint bytea NOT NULL CHECK (length(key_fingerprint) = 32),  -- SHA-256 of the SPKI
    passkey_hash    bytea NOT NULL CHECK (length(passkey_hash) = 32),     -- SHA-256 of the 32 passkey bytes
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),       -- SHA-256 of the 32 token bytes
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL                                     -- 30 days, not sliding
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- A signup challenge carries the pending account (created only when answered);
-- a login challenge names the existing user.
CREATE TABLE challenges (
    id           uuid PRIMARY KEY,
    purpose      text NOT NULL CHECK (purpose IN ('signup', 'login')),
    user_id      uuid REFERENCES users (id) ON DELETE CASCADE,
    username     text,
    public_key   bytea,
    answer_hash  bytea NOT NULL CHECK (length(answer_hash) = 32),        -- SHA-256 of the expected answer
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    CHECK ((purpose = 'login' AND user_id IS NOT NULL)
        OR (purpose = 'signup' AND username IS NOT NULL AND public_key IS NOT NULL))
);
CREATE INDEX challenges_expires_at ON challenges (expires_at);

CREATE TABLE channels (
    id                  uuid PRIMARY KEY,                    -- made by the creating client
    name                text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
    owner_id            uuid REFERENCES users (id),          -- null once the last member left
    membership_version  integer NOT NULL CHECK (membership_version >= 1),
    last_seq            bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    current_key_id      uuid,                                -- the newest key record, if any
    created_at          timestamptz NOT NULL DEFAULT now(),
    closed_at           timestamptz
);

-- The chain of signed statements, stored with exactly the fields of the contract.
-- text_hash is SHA-256 of the statement's signed text: the next version's `prev`.
CREATE TABLE membership_statements (
    channel_id  uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version >= 1),
    prev        bytea NOT NULL CHECK (length(prev) IN (0, 32)),
    ts          bigint NOT NULL,
    owner_id    uuid,
    members     uuid[] NOT NULL,                             -- sorted ascending
    signer_id   uuid NOT NULL REFERENCES users (id),
    sig         bytea NOT NULL,
    text_hash   bytea NOT NULL CHECK (length(text_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, version)
);

-- The current members. join_seq is the channel's last_seq at the member's latest join:
-- history, subscribe replay and the 1000-missed count start after it.
CREATE TABLE channel_members (
    channel_id  uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id),
    role        text NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at   timestamptz NOT NULL DEFAULT now(),
    join_seq    bigint NOT NULL CHECK (join_seq >= 0),
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user_id ON channel_members (user_id);

-- Key records form a chain per channel: each names its predecessor, and a predecessor
-- has at most one successor (NULLS NOT DISTINCT makes "no predecessor" count once too),
-- so two concurrent rotations cannot both be stored.
CREATE TABLE channel_keys (
    id                  uuid PRIMARY KEY,                    -- made by the rotating client
    channel_id          uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    creator_id          uuid NOT NULL REFERENCES users (id),
    previous_key_id     uuid REFERENCES channel_keys (id),
    membership_version  integer NOT NULL,
    digest              bytea NOT NULL CHECK (length(digest) = 32),
    sig                 bytea NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,                -- min(created_at + TTL, next membership change)
    CONSTRAINT channel_keys_one_successor UNIQUE NULLS NOT DISTINCT (channel_id, previous_key_id)
);
CREATE INDEX channel_keys_channel_id ON channel_keys (channel_id, created_at);

ALTER TABLE channels
    ADD CONSTRAINT channels_current_key_fk FOREIGN KEY (current_key_id) REFERENCES channel_keys (id);

-- One RSA-OAEP-wrapped copy of a channel key per member of its membership version.
CREATE TABLE channel_key_copies (
    key_id         uuid NOT NULL REFERENCES channel_keys (id) ON DELETE CASCADE,
    user_id        uuid NOT NULL REFERENCES users (id),
    encrypted_key  bytea NOT NULL,
    PRIMARY KEY (key_id, user_id)
);

-- seq is assigned in the inserting transaction under the channel's row lock, so commit
-- order is seq order and a channel's seqs have no gaps.
CREATE TABLE messages (
    channel_id     uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    seq            bigint NOT NULL CHECK (seq >= 1),
    sender_id      uuid NOT NULL REFERENCES users (id),
    client_msg_id  uuid NOT NULL,
    key_id         uuid NOT NULL REFERENCES channel_keys (id),
    iv             bytea NOT NULL CHECK (length(iv) = 12),
    ciphertext     bytea NOT NULL CHECK (length(ciphertext) >= 16),
    ts             bigint NOT NULL,                           -- client's unix seconds (signed)
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, seq),
    CONSTRAINT messages_idempotent UNIQUE (sender_id, client_msg_id),
    CONSTRAINT messages_iv_once UNIQUE (key_id, iv)
);
