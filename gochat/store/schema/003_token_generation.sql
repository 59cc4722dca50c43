-- Tokens are bound to their account: a token carries the account's creation
-- time and its token generation, and is refused once either differs from the
-- row. POST /logout_all bumps the generation, revoking every earlier token.
ALTER TABLE users ADD COLUMN token_generation {bigint} NOT NULL DEFAULT 0;
