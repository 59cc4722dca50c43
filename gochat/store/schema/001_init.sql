-- Users, friends, groups and the per-user message list (write diffusion).
-- {autoinc_pk}, {blob}, {bigint} and {text_key} are filled in by the engine.
CREATE TABLE users (
    id {autoinc_pk},
    phone_number {text_key} NOT NULL UNIQUE,
    nickname VARCHAR(64) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at {bigint} NOT NULL
);

CREATE TABLE user_seq (
    user_id {bigint} NOT NULL PRIMARY KEY,
    seq {bigint} NOT NULL
);

CREATE TABLE friends (
    user_id {bigint} NOT NULL,
    friend_id {bigint} NOT NULL,
    created_at {bigint} NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

CREATE TABLE chat_groups (
    id {autoinc_pk},
    name VARCHAR(128) NOT NULL,
    owner_id {bigint} NOT NULL,
    created_at {bigint} NOT NULL
);

CREATE TABLE group_members (
    group_id {bigint} NOT NULL,
    user_id {bigint} NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

-- One row per recipient per message, the sender's own copy included.
CREATE TABLE messages (
    user_id {bigint} NOT NULL,
    seq {bigint} NOT NULL,
    sender_id {bigint} NOT NULL,
    session_type INTEGER NOT NULL,
    receiver_id {bigint} NOT NULL,
    message_type INTEGER NOT NULL,
    content {blob} NOT NULL,
    send_time {bigint} NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- Last accepted clientId per (user, device): upstream exactly-once across reconnects.
CREATE TABLE devices (
    user_id {bigint} NOT NULL,
    device_id {text_key} NOT NULL,
    last_client_id {bigint} NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- The ACK given to each clientId of a device, so a retransmit gets the same answer.
CREATE TABLE device_acks (
    user_id {bigint} NOT NULL,
    device_id {text_key} NOT NULL,
    client_id {bigint} NOT NULL,
    code INTEGER NOT NULL,
    seq {bigint} NOT NULL,
    PRIMARY KEY (user_id, device_id, client_id)
);
