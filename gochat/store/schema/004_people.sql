-- People, groups that change, conversations with unread counts and read positions.
-- Unread counts cost O(1) per message: each conversation has a counter (its
-- head) and each message one narrow row with its position in it; each user has
-- a read position per conversation. Nothing here is written per recipient.

-- Bumped by every membership change or rename: a writer on another node that
-- cached the member list sees the change in the same transaction.
ALTER TABLE chat_groups ADD COLUMN version {bigint} NOT NULL DEFAULT 0;

-- When a member joined (ms): an owner who leaves hands over to the earliest.
ALTER TABLE group_members ADD COLUMN joined_at {bigint} NOT NULL DEFAULT 0;

-- One row per conversation: a group (2, group id, 0) or a pair (1, low id, high id).
CREATE TABLE conversation_heads (
    session_type INTEGER NOT NULL,
    low_id {bigint} NOT NULL,
    high_id {bigint} NOT NULL,
    last_pos {bigint} NOT NULL,
    last_owner_id {bigint} NOT NULL,
    last_owner_seq {bigint} NOT NULL,
    last_time {bigint} NOT NULL,
    PRIMARY KEY (session_type, low_id, high_id)
);

-- Each message's position in its conversation; peer_seq is the receiver's
-- seq of a one-to-one message (0 for a group).
CREATE TABLE message_positions (
    owner_id {bigint} NOT NULL,
    owner_seq {bigint} NOT NULL,
    pos {bigint} NOT NULL,
    peer_seq {bigint} NOT NULL,
    PRIMARY KEY (owner_id, owner_seq)
){without_rowid};

-- A user's conversations and read positions; left_* is set when the user left
-- or was removed from a group (the removal is their last message of it).
CREATE TABLE conversations (
    user_id {bigint} NOT NULL,
    session_type INTEGER NOT NULL,
    peer_id {bigint} NOT NULL,
    read_pos {bigint} NOT NULL,
    read_seq {bigint} NOT NULL,
    left_pos {bigint} NOT NULL,
    left_owner_id {bigint} NOT NULL,
    left_owner_seq {bigint} NOT NULL,
    left_time {bigint} NOT NULL,
    PRIMARY KEY (user_id, session_type, peer_id)
);

CREATE INDEX conversations_by_peer ON conversations (session_type, peer_id);

-- Groups of the earlier schema become conversations with no position yet.
INSERT INTO conversation_heads (session_type, low_id, high_id, last_pos, last_owner_id,
    last_owner_seq, last_time)
SELECT 2, id, 0, 0, 0, 0, created_at FROM chat_groups;

INSERT INTO conversations (user_id, session_type, peer_id, read_pos, read_seq, left_pos,
    left_owner_id, left_owner_seq, left_time)
SELECT user_id, 2, group_id, 0, 0, 0, 0, 0, 0 FROM group_members;

-- /group/list: the groups of one user.
CREATE INDEX group_members_by_user ON group_members (user_id);
