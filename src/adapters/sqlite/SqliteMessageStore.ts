/**
 * Embedded mode's MessageStore: one SQLite database (node:sqlite),
 * `<dataDir>/messages/messages.db`, in WAL mode with `synchronous=FULL`.
 *
 * A file of its own, not the event log's: the log is trimmed and rewritten
 * all the time while history only grows, so each file checkpoints and
 * vacuums on its own terms, and history can be copied or inspected alone.
 *
 * FULL, not NORMAL: once a batch is written the log's offsets move past it
 * and retention may delete its records, so nothing could rebuild a batch
 * that a power cut took from an unsynced WAL — and the chat's actor would
 * then hand its seqs out again. Writes are group-committed: the batches
 * queued while one transaction ran share the next one, and its fsync.
 *
 * Writes commit on a worker thread (SqliteWriter.ts), so no fsync holds
 * the event loop; reads run on the event loop, where SQLite answers a keyed
 * read in microseconds, far less than a hop to a thread would cost.
 */
import { randomBytes } from "node:crypto"
import { mkdirSync } from "node:fs"
import { join } from "node:path"
import { DatabaseSync, type StatementSync } from "node:sqlite"
import { Cause, Deferred, Effect, Fiber, Layer, Option, Queue, Schema, SchemaTransformation, type Scope } from "effect"
import { mergeBySeq, MessageStore, MessageStoreError, type PageQuery } from "../../ports/MessageStore.ts"
import {
  Change,
  type ChatId,
  isChange,
  type LogEntry,
  Message,
  type ReactionCount,
  type UserId
} from "../../schema/Domain.ts"
import * as SqliteWriter from "./SqliteWriter.ts"

export interface Options {
  /** The directory of the store's database (created when missing). */
  readonly directory: string
}

/** The port, and what the import of older data (EmbeddedMessageStore.ts) needs beyond it. */
export interface SqliteMessageStore extends Readonly<MessageStore["Service"]> {
  readonly path: string
  /** True when the store holds no message and no epoch. */
  readonly isEmpty: Effect.Effect<boolean, MessageStoreError>
  /** A note kept in the store (an import's progress), or undefined. */
  readonly note: (key: string) => Effect.Effect<string | undefined, MessageStoreError>
  /**
   * Runs `body` in one transaction (everything it writes lands, or none of
   * it): `write` stores messages and epochs without a transaction of its own.
   * It runs on the event loop's connection, for work before the store serves
   * (the import at start): the writer thread would wait for it meanwhile.
   */
  readonly transaction: <A, E, R>(
    body: (write: Writer) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | MessageStoreError, R>
}

export interface Writer {
  readonly messages: (messages: ReadonlyArray<Message>) => void
  readonly epoch: (chatId: ChatId, epoch: string) => void
  readonly note: (key: string, value: string) => void
}

interface PendingBatch {
  readonly entries: ReadonlyArray<LogEntry>
  readonly done: Deferred.Deferred<void, MessageStoreError>
}

const schema = `
  CREATE TABLE IF NOT EXISTS messages (
    chat_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, author_id TEXT NOT NULL,
    body TEXT NOT NULL, client_msg_id TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (chat_id, seq)
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS epochs (chat_id TEXT PRIMARY KEY, epoch TEXT NOT NULL) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
  -- The changes on the log (edits, deletes, reactions), each as its JSON entry.
  CREATE TABLE IF NOT EXISTS changes (
    chat_id TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (chat_id, seq)
  ) WITHOUT ROWID;
  -- What the edits and deletes made of a message; each column pair is won by
  -- the highest edit seq, and the lowest delete seq.
  CREATE TABLE IF NOT EXISTS message_state (
    chat_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT, edited_at TEXT, edit_seq INTEGER,
    deleted_at TEXT, delete_seq INTEGER, PRIMARY KEY (chat_id, seq)
  ) WITHOUT ROWID;
  -- Each user's each emoji on a message, won by the highest reaction seq.
  CREATE TABLE IF NOT EXISTS reactions (
    chat_id TEXT NOT NULL, seq INTEGER NOT NULL, emoji TEXT NOT NULL, user_id TEXT NOT NULL,
    reaction_seq INTEGER NOT NULL, present INTEGER NOT NULL, PRIMARY KEY (chat_id, seq, emoji, user_id)
  ) WITHOUT ROWID;
`

const putSql = `INSERT OR REPLACE INTO messages (chat_id, seq, id, author_id, body, client_msg_id, created_at)
  VALUES (?, ?, ?, ?, ?, ?, ?)`
const createEpochSql = "INSERT OR IGNORE INTO epochs (chat_id, epoch) VALUES (?, ?)"
const putChangeSql = "INSERT OR REPLACE INTO changes (chat_id, seq, entry) VALUES (?, ?, ?)"
const applyEditSql = `INSERT INTO message_state (chat_id, seq, body, edited_at, edit_seq) VALUES (?, ?, ?, ?, ?)
  ON CONFLICT (chat_id, seq) DO UPDATE SET body = excluded.body, edited_at = excluded.edited_at, edit_seq = excluded.edit_seq
  WHERE message_state.deleted_at IS NULL AND (message_state.edit_seq IS NULL OR message_state.edit_seq < excluded.edit_seq)`
const applyDeleteSql = `INSERT INTO message_state (chat_id, seq, deleted_at, delete_seq) VALUES (?, ?, ?, ?)
  ON CONFLICT (chat_id, seq) DO UPDATE SET deleted_at = excluded.deleted_at, delete_seq = excluded.delete_seq,
    body = NULL, edited_at = NULL
  WHERE message_state.delete_seq IS NULL OR message_state.delete_seq > excluded.delete_seq`
// A deleted message's text goes from the store, not only from its history.
const eraseBodySql = "UPDATE messages SET body = '' WHERE chat_id = ? AND seq = ?"
const applyReactionSql = `INSERT INTO reactions (chat_id, seq, emoji, user_id, reaction_seq, present) VALUES (?, ?, ?, ?, ?, ?)
  ON CONFLICT (chat_id, seq, emoji, user_id) DO UPDATE SET reaction_seq = excluded.reaction_seq, present = excluded.present
  WHERE reactions.reaction_seq < excluded.reaction_seq`
const deleteSomeSql = (table: string) =>
  `DELETE FROM ${table} WHERE chat_id = ? AND seq IN (SELECT seq FROM ${table} WHERE chat_id = ? LIMIT ?)`
const deleteEpochSql = "DELETE FROM epochs WHERE chat_id = ?"

const columns = `m.chat_id AS chatId, m.seq AS seq, m.id AS id, m.author_id AS authorId, m.body AS body,
  m.client_msg_id AS clientMsgId, m.created_at AS createdAt,
  s.body AS editedBody, s.edited_at AS editedAt, s.deleted_at AS deletedAt`
const withState = "messages m LEFT JOIN message_state s ON s.chat_id = m.chat_id AND s.seq = m.seq"

/** Rows deleted per transaction by deleteChat, so a huge chat never holds the event loop for long. */
const deleteRound = 1_000

const MessageRow = Schema.Struct({
  chatId: Schema.String,
  seq: Schema.Number,
  id: Schema.String,
  authorId: Schema.String,
  body: Schema.String,
  clientMsgId: Schema.String,
  createdAt: Schema.String,
  editedBody: Schema.NullOr(Schema.String),
  editedAt: Schema.NullOr(Schema.String),
  deletedAt: Schema.NullOr(Schema.String)
})
/** A row of `messages` joined with its state: the message as history shows it. */
const RowMessage = MessageRow.pipe(
  Schema.decodeTo(
    Message,
    SchemaTransformation.transform({
      decode: (row) => ({
        chatId: row.chatId,
        seq: row.seq,
        id: row.id,
        authorId: row.authorId,
        ...(row.deletedAt === null ? { body: row.editedBody ?? row.body } : {}),
        clientMsgId: row.clientMsgId,
        createdAt: row.createdAt,
        ...(row.deletedAt === null && row.editedAt !== null ? { editedAt: row.editedAt } : {}),
        ...(row.deletedAt === null ? {} : { deletedAt: row.deletedAt })
      }),
      encode: (m) => ({
        chatId: m.chatId,
        seq: m.seq,
        id: m.id,
        authorId: m.authorId,
        body: m.body ?? "",
        clientMsgId: m.clientMsgId,
        createdAt: m.createdAt,
        editedBody: null,
        editedAt: m.editedAt ?? null,
        deletedAt: m.deletedAt ?? null
      })
    })
  )
)
const decodeRows = Schema.decodeUnknownEffect(Schema.Array(RowMessage))
const decodeChanges = Schema.decodeUnknownEffect(Schema.Array(Schema.Struct({ entry: Schema.fromJsonString(Change) })))
const encodeChange = Schema.encodeSync(Schema.fromJsonString(Change))
const ReactionRows = Schema.Array(
  Schema.Struct({ seq: Schema.Number, emoji: Schema.String, count: Schema.Number, me: Schema.Number })
)
const decodeReactionRows = Schema.decodeUnknownEffect(ReactionRows)

/** The statements that write one entry, and apply it when it is a change. */
const stepsOf = (entry: LogEntry): Array<SqliteWriter.Step> => {
  if (!isChange(entry)) {
    const m = entry
    return [[putSql, [m.chatId, m.seq, m.id, m.authorId, m.body ?? "", m.clientMsgId, m.createdAt]]]
  }
  const put: SqliteWriter.Step = [putChangeSql, [entry.chatId, entry.seq, encodeChange(entry)]]
  switch (entry.type) {
    case "message_edited":
      return [[applyEditSql, [entry.chatId, entry.targetSeq, entry.body, entry.editedAt, entry.seq]], put]
    case "message_deleted":
      return [
        [applyDeleteSql, [entry.chatId, entry.targetSeq, entry.deletedAt, entry.seq]],
        [eraseBodySql, [entry.chatId, entry.targetSeq]],
        put
      ]
    case "reaction":
      return [
        [applyReactionSql, [entry.chatId, entry.targetSeq, entry.emoji, entry.userId, entry.seq, entry.added ? 1 : 0]],
        put
      ]
  }
}

export const make = Effect.fnUntraced(function* (
  options: Options
): Effect.fn.Return<SqliteMessageStore, MessageStoreError, Scope.Scope> {
  const path = join(options.directory, "messages.db")
  const fail = (operation: string) => (cause: unknown) =>
    new MessageStoreError({ message: `message store ${path}: ${operation}: ${String(cause)}`, cause })
  const attempt = <A>(operation: string, run: () => A) => Effect.try({ try: run, catch: fail(operation) })

  const db = yield* Effect.acquireRelease(
    attempt("open", () => {
      mkdirSync(options.directory, { recursive: true })
      const db = new DatabaseSync(path)
      db.exec("PRAGMA journal_mode = WAL")
      db.exec("PRAGMA synchronous = FULL")
      db.exec(schema)
      return db
    }),
    (db) => Effect.sync(() => db.close())
  )

  const statements = {
    put: db.prepare(putSql),
    after: db.prepare(`SELECT ${columns} FROM ${withState} WHERE m.chat_id = ? AND m.seq > ? ORDER BY m.seq LIMIT ?`),
    before: db.prepare(
      `SELECT ${columns} FROM ${withState} WHERE m.chat_id = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?`
    ),
    latest: db.prepare(`SELECT ${columns} FROM ${withState} WHERE m.chat_id = ? ORDER BY m.seq DESC LIMIT ?`),
    one: db.prepare(`SELECT ${columns} FROM ${withState} WHERE m.chat_id = ? AND m.seq = ?`),
    changesAfter: db.prepare("SELECT entry FROM changes WHERE chat_id = ? AND seq > ? ORDER BY seq LIMIT ?"),
    changesLatest: db.prepare("SELECT entry FROM changes WHERE chat_id = ? ORDER BY seq DESC LIMIT ?"),
    // Per message and emoji, in the order the emojis first appeared: how many, and whether `viewer` is among them.
    reactions: db.prepare(`SELECT seq, emoji, COUNT(*) AS count, MAX(user_id = ?) AS me FROM reactions
      WHERE chat_id = ? AND seq BETWEEN ? AND ? AND present = 1 GROUP BY seq, emoji ORDER BY seq, MIN(reaction_seq)`),
    readEpoch: db.prepare("SELECT epoch FROM epochs WHERE chat_id = ?"),
    putEpoch: db.prepare("INSERT OR REPLACE INTO epochs (chat_id, epoch) VALUES (?, ?)"),
    any: db.prepare("SELECT EXISTS (SELECT 1 FROM messages) OR EXISTS (SELECT 1 FROM epochs) AS found"),
    readNote: db.prepare("SELECT value FROM notes WHERE key = ?"),
    putNote: db.prepare("INSERT OR REPLACE INTO notes (key, value) VALUES (?, ?)"),
    ping: db.prepare("SELECT 1")
  } satisfies Record<string, StatementSync>

  const writer: Writer = {
    messages: (messages) => {
      for (const m of messages)
        statements.put.run(m.chatId, m.seq, m.id, m.authorId, m.body ?? "", m.clientMsgId, m.createdAt)
    },
    epoch: (chatId, epoch) => {
      statements.putEpoch.run(chatId, epoch)
    },
    note: (key, value) => {
      statements.putNote.run(key, value)
    }
  }

  const validLimit = (limit: number) =>
    Number.isInteger(limit) && limit >= 0
      ? Effect.succeed(limit)
      : Effect.fail(new MessageStoreError({ message: `limit must be a non-negative integer, got ${limit}` }))

  const query = (operation: string, statement: StatementSync, ...params: Array<string | number>) =>
    attempt(operation, () => statement.all(...params)).pipe(
      Effect.flatMap((rows) =>
        decodeRows(rows).pipe(Effect.mapError((error) => fail(`${operation}: a stored message is malformed`)(error)))
      )
    )
  const queryChanges = (operation: string, statement: StatementSync, ...params: Array<string | number>) =>
    attempt(operation, () => statement.all(...params)).pipe(
      Effect.flatMap((rows) =>
        decodeChanges(rows).pipe(Effect.mapError((error) => fail(`${operation}: a stored change is malformed`)(error)))
      ),
      Effect.map((rows) => rows.map((row) => row.entry))
    )

  /** The messages with their reactions as `viewer` sees them. */
  const withReactions = (chatId: ChatId, messages: ReadonlyArray<Message>, viewer: UserId) =>
    Effect.gen(function* () {
      if (messages.length === 0) return messages
      let low = Number.POSITIVE_INFINITY
      let high = 0
      for (const m of messages) {
        low = Math.min(low, m.seq)
        high = Math.max(high, m.seq)
      }
      const operation = `reading the reactions of chat ${chatId}`
      const rows = yield* attempt(operation, () => statements.reactions.all(viewer, chatId, low, high)).pipe(
        Effect.flatMap(decodeReactionRows),
        Effect.mapError((error) => (error._tag === "MessageStoreError" ? error : fail(operation)(error)))
      )
      const bySeq = new Map<number, Array<ReactionCount>>()
      for (const row of rows) {
        const list = bySeq.get(row.seq) ?? []
        list.push({ emoji: row.emoji, count: row.count, me: row.me === 1 })
        bySeq.set(row.seq, list)
      }
      return messages.map((m) => {
        const reactions = bySeq.get(m.seq)
        return reactions === undefined || m.deletedAt !== undefined ? m : new Message({ ...m, reactions })
      })
    })

  // Writes commit on a thread of their own (SqliteWriter.ts), so the fsync never holds the event loop.
  const sqliteWriter = yield* SqliteWriter.make(path)
  const write = (operation: string, steps: ReadonlyArray<SqliteWriter.Step>) =>
    sqliteWriter.run(steps).pipe(Effect.mapError(fail(operation)))

  // Group commit: the batches of every partition's sink that queued while
  // the last write ran go in one transaction, so they share one fsync.
  const pending = yield* Queue.unbounded<PendingBatch, Cause.Done>()
  const flush = (batches: ReadonlyArray<PendingBatch>) => {
    const steps: Array<SqliteWriter.Step> = []
    let entries = 0
    for (const batch of batches) {
      entries += batch.entries.length
      for (const entry of batch.entries) steps.push(...stepsOf(entry))
    }
    return write(`writing ${entries} entries`, steps).pipe(
      Effect.asVoid,
      Effect.exit,
      Effect.tap((exit) =>
        Effect.sync(() => {
          for (const batch of batches) Deferred.doneUnsafe(batch.done, exit)
        })
      )
    )
  }
  const flusher = yield* Queue.takeAll(pending).pipe(
    Effect.flatMap(flush),
    Effect.forever,
    Effect.catchIf(Cause.isDone, () => Effect.void),
    Effect.forkScoped
  )
  // Closing: what is queued is still written, then the database closes.
  yield* Effect.addFinalizer(() => Queue.end(pending).pipe(Effect.andThen(Fiber.join(flusher))))

  // Duplicates within a batch and across batches replace each other: one copy per (chatId, seq).
  // One transaction: a change is applied exactly when it is written.
  const putBatch = Effect.fn("MessageStore.putBatch")(function* (entries: ReadonlyArray<LogEntry>) {
    if (entries.length === 0) return
    const done = yield* Deferred.make<void, MessageStoreError>()
    if (!(yield* Queue.offer(pending, { entries, done }))) {
      return yield* new MessageStoreError({ message: `message store ${path} is closed` })
    }
    yield* Deferred.await(done)
  })

  const page = Effect.fn("MessageStore.page")(function* (chatId: ChatId, pageQuery: PageQuery) {
    const limit = yield* validLimit(pageQuery.limit)
    const messages =
      pageQuery.before !== undefined
        ? yield* query(`reading a page of chat ${chatId}`, statements.before, chatId, pageQuery.before, limit)
        : yield* query(`reading a page of chat ${chatId}`, statements.after, chatId, pageQuery.after ?? 0, limit)
    return pageQuery.viewer === undefined ? messages : yield* withReactions(chatId, messages, pageQuery.viewer)
  })

  const entries = Effect.fn("MessageStore.entries")(function* (chatId: ChatId, after: number, limit: number) {
    yield* validLimit(limit)
    const operation = `reading the log of chat ${chatId}`
    const messages = yield* query(operation, statements.after, chatId, after, limit)
    const changes = yield* queryChanges(operation, statements.changesAfter, chatId, after, limit)
    return mergeBySeq(messages, changes, false, limit)
  })

  const latest = Effect.fn("MessageStore.latest")(function* (chatId: ChatId, limit: number) {
    yield* validLimit(limit)
    const operation = `reading the latest entries of chat ${chatId}`
    const messages = yield* query(operation, statements.latest, chatId, limit)
    const changes = yield* queryChanges(operation, statements.changesLatest, chatId, limit)
    return mergeBySeq(messages, changes, true, limit)
  })

  const message = Effect.fn("MessageStore.message")(function* (chatId: ChatId, seq: number) {
    const found = yield* query(`reading message ${seq} of chat ${chatId}`, statements.one, chatId, seq)
    return Option.fromNullishOr(found[0])
  })

  // Created with the chat's history and deleted with it: a wiped store means new epochs.
  const epoch = Effect.fn("MessageStore.epoch")(function* (chatId: ChatId) {
    const operation = `reading the epoch of chat ${chatId}`
    const read = attempt(operation, () => {
      const row = statements.readEpoch.get(chatId)
      return row === undefined ? undefined : String(row.epoch)
    })
    const known = yield* read
    if (known !== undefined) return known
    // Concurrent callers may both create one: the first wins, and both read it back.
    yield* write(operation, [[createEpochSql, [chatId, randomBytes(6).toString("base64url")]]])
    const created = yield* read
    if (created !== undefined) return created
    return yield* new MessageStoreError({ message: `the epoch of chat ${chatId} vanished while being created` })
  })

  // Round by round, each its own transaction; the epoch goes last, so a repeat after a failure finishes the job.
  const deleteChat = Effect.fn("MessageStore.deleteChat")(function* (chatId: ChatId) {
    const operation = `deleting chat ${chatId}`
    for (const table of ["messages", "changes", "message_state", "reactions"]) {
      let deleted: number
      do {
        deleted = (yield* write(operation, [[deleteSomeSql(table), [chatId, chatId, deleteRound]]]))[0] ?? 0
      } while (deleted > 0)
    }
    yield* write(operation, [[deleteEpochSql, [chatId]]])
  })

  const ping = attempt("ping", () => statements.ping.get()).pipe(Effect.asVoid, Effect.withSpan("MessageStore.ping"))

  return {
    ...MessageStore.of({ putBatch, page, entries, latest, message, epoch, deleteChat, ping }),
    path,
    isEmpty: attempt("checking for data", () => Number(statements.any.get()?.found) === 0),
    note: (key) =>
      attempt(`reading note ${key}`, () => {
        const row = statements.readNote.get(key)
        return row === undefined ? undefined : String(row.value)
      }),
    transaction: (body) =>
      Effect.acquireUseRelease(
        attempt("beginning a transaction", () => db.exec("BEGIN IMMEDIATE")),
        () => body(writer).pipe(Effect.tap(() => attempt("committing", () => db.exec("COMMIT")))),
        () =>
          Effect.sync(() => {
            if (db.isTransaction) db.exec("ROLLBACK")
          })
      )
  }
})

/** The store in `options.directory`, open for the layer's lifetime. */
export const layer = (options: Options): Layer.Layer<MessageStore, MessageStoreError> =>
  Layer.effect(MessageStore, make(options))
