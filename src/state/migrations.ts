/**
 * The state schema (Postgres and PGlite alike). Migrations run on `serve` and
 * `migrate`; each runs once, in id order, recorded by effect's Migrator.
 */
import { Effect } from "effect"
import { Migrator, SqlClient } from "effect/sql"

const v1 = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE users (
      id text PRIMARY KEY,
      username text NOT NULL UNIQUE,
      display_name text NOT NULL,
      password_hash text,
      created_at timestamptz NOT NULL DEFAULT now(),
      deleted_at timestamptz
    )`
  // A refresh token is `<id>.<secret>`; only a hash of the secret is kept.
  // Rotation links tokens of one login into a family, so reuse of a rotated
  // token can revoke every token descended from the same login.
  yield* sql`
    CREATE TABLE refresh_tokens (
      id text PRIMARY KEY,
      family_id text NOT NULL,
      user_id text NOT NULL REFERENCES users (id),
      secret_hash text NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      expires_at timestamptz NOT NULL,
      rotated_at timestamptz,
      revoked_at timestamptz
    )`
  yield* sql`CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id)`
  yield* sql`CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id) WHERE revoked_at IS NULL`
  yield* sql`
    CREATE TABLE chats (
      id text PRIMARY KEY,
      name text,
      kind text NOT NULL CHECK (kind IN ('group', 'direct')),
      owner_id text REFERENCES users (id),
      direct_key text UNIQUE,
      created_at timestamptz NOT NULL DEFAULT now(),
      last_seq bigint NOT NULL DEFAULT 0
    )`
  yield* sql`
    CREATE TABLE memberships (
      chat_id text NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
      user_id text NOT NULL REFERENCES users (id),
      role text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
      joined_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      last_read_seq bigint NOT NULL DEFAULT 0,
      PRIMARY KEY (chat_id, user_id)
    )`
  yield* sql`CREATE INDEX memberships_user ON memberships (user_id)`
  // Every state change writes its event here in the same transaction; the
  // outbox relay publishes unpublished rows to Kafka `chat.events` in id order.
  yield* sql`
    CREATE TABLE outbox (
      id bigserial PRIMARY KEY,
      event_id text NOT NULL UNIQUE,
      aggregate_id text NOT NULL,
      type text NOT NULL,
      version integer NOT NULL,
      payload jsonb NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      published_at timestamptz
    )`
  yield* sql`CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL`
})

// The relay marks a batch as attempted before publishing it: after a crash,
// only attempted rows can be in the log unmarked, and only they are checked
// against it (a row that committed late, with a lower id, was never attempted).
const v2 = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`ALTER TABLE outbox ADD COLUMN attempted_at timestamptz`
})

// The search index (src/state/SearchIndex.ts), kept current by the search
// indexer from the message store. A deleted message stays as a row without a
// body, so a redelivered send cannot bring it back. Rows go with their chat.
const v3 = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE search_messages (
      chat_id text NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
      seq bigint NOT NULL,
      message_id text NOT NULL,
      author_id text NOT NULL,
      created_at timestamptz NOT NULL,
      body text,
      tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(body, ''))) STORED,
      PRIMARY KEY (chat_id, seq)
    )`
  yield* sql`CREATE INDEX search_messages_tsv ON search_messages USING gin (tsv)`
  yield* sql`CREATE INDEX search_messages_message ON search_messages (chat_id, message_id)`
})

export const migrations = Migrator.fromRecord({
  "1_state": v1,
  "2_outbox_attempts": v2,
  "3_search_index": v3
})

/** Runs pending migrations; answers the ones it applied. */
export const migrate = Migrator.make({})({ loader: migrations, table: "harmony_migrations" })
