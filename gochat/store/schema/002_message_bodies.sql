-- Write diffusion without copying a message's body to every recipient: the
-- body is stored once, under the sender's own list entry (its owner), and
-- every recipient's list (the sender's included) gets a narrow row that
-- points at it. A 500-member group message was 500 copies of its content;
-- it is now one body and 500 rows of four integers.
CREATE TABLE message_bodies (
    owner_id {bigint} NOT NULL,
    owner_seq {bigint} NOT NULL,
    sender_id {bigint} NOT NULL,
    session_type INTEGER NOT NULL,
    receiver_id {bigint} NOT NULL,
    message_type INTEGER NOT NULL,
    content {blob} NOT NULL,
    send_time {bigint} NOT NULL,
    PRIMARY KEY (owner_id, owner_seq)
);

-- One row per recipient per message: each user's message list, in seq order.
CREATE TABLE user_messages (
    user_id {bigint} NOT NULL,
    seq {bigint} NOT NULL,
    owner_id {bigint} NOT NULL,
    owner_seq {bigint} NOT NULL,
    PRIMARY KEY (user_id, seq)
){without_rowid};

-- Rows of the first schema become their own bodies.
INSERT INTO message_bodies (owner_id, owner_seq, sender_id, session_type, receiver_id,
    message_type, content, send_time)
SELECT user_id, seq, sender_id, session_type, receiver_id, message_type, content, send_time
FROM messages;

INSERT INTO user_messages (user_id, seq, owner_id, owner_seq)
SELECT user_id, seq, user_id, seq FROM messages;

DROP TABLE messages;

-- Each user's list with the bodies, as the first schema's table was.
CREATE VIEW messages AS
SELECT um.user_id, um.seq, b.sender_id, b.session_type, b.receiver_id, b.message_type,
    b.content, b.send_time
FROM user_messages um
JOIN message_bodies b ON b.owner_id = um.owner_id AND b.owner_seq = um.owner_seq;
