-- Write diffusion by runs: a user's list is a sequence of runs, each a range
-- of that user's consecutive seqs pointing at consecutive messages of one
-- stream. A stream is the messages one batch committed to one conversation
-- (a group, or a pair of users), named by its first message's body and
-- numbered 0, 1, 2, ... (idx). A batch of 1,000 messages to a 500-member
-- group was 500,000 list rows; it is now 500 runs and 1,000 bodies.
ALTER TABLE message_bodies ADD COLUMN stream_owner {bigint} NOT NULL DEFAULT 0;

ALTER TABLE message_bodies ADD COLUMN stream_seq {bigint} NOT NULL DEFAULT 0;

ALTER TABLE message_bodies ADD COLUMN idx {bigint} NOT NULL DEFAULT 0;

CREATE INDEX message_bodies_by_stream ON message_bodies (stream_owner, stream_seq, idx);

-- Seqs seq..last_seq of user_id are the stream's messages first_idx.. in order.
-- Keyed by last_seq: "the run holding seq s" is the first run with last_seq >= s.
CREATE TABLE user_runs (
    user_id {bigint} NOT NULL,
    last_seq {bigint} NOT NULL,
    seq {bigint} NOT NULL,
    stream_owner {bigint} NOT NULL,
    stream_seq {bigint} NOT NULL,
    first_idx {bigint} NOT NULL,
    PRIMARY KEY (user_id, last_seq)
){without_rowid};

-- Every earlier list row is a run of one message: its body is a stream of its own.
INSERT INTO user_runs (user_id, last_seq, seq, stream_owner, stream_seq, first_idx)
SELECT user_id, seq, seq, owner_id, owner_seq, 0 FROM user_messages;

DROP VIEW messages;

DROP TABLE user_messages;

-- Each user's list one row per message, as before (for reading by hand and
-- for tests; the node's own queries go through the runs' keys).
CREATE VIEW user_messages AS
SELECT r.user_id, r.seq + (b.idx - r.first_idx) AS seq, b.owner_id, b.owner_seq
FROM user_runs r
JOIN message_bodies b ON b.stream_owner = r.stream_owner AND b.stream_seq = r.stream_seq
    AND b.idx >= r.first_idx AND b.idx <= r.first_idx + (r.last_seq - r.seq);

CREATE VIEW messages AS
SELECT r.user_id, r.seq + (b.idx - r.first_idx) AS seq, b.sender_id, b.session_type,
    b.receiver_id, b.message_type, b.content, b.send_time
FROM user_runs r
JOIN message_bodies b ON b.stream_owner = r.stream_owner AND b.stream_seq = r.stream_seq
    AND b.idx >= r.first_idx AND b.idx <= r.first_idx + (r.last_seq - r.seq);

UPDATE message_bodies SET stream_owner = owner_id, stream_seq = owner_seq;
