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
import { Cause, Deferred, Effect, Fiber, Layer, Queue, Schema, type Scope } from "effect"
import { MessageStore, MessageStoreError, type PageQuery } from "../../ports/MessageStore.ts"
import { type ChatId, Message } from "../../schema/Domain.ts"
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
  readonly messages: ReadonlyArray<Message>
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
`

const putSql = `INSERT OR REPLACE INTO messages (chat_id, seq, id, author_id, body, client_msg_id, created_at)
  VALUES (?, ?, ?, ?, ?, ?, ?)`
const createEpochSql = "INSERT OR IGNORE INTO epochs (chat_id, epoch) VALUES (?, ?)"
const deleteSomeSql =
  "DELETE FROM messages WHERE chat_id = ? AND seq IN (SELECT seq FROM messages WHERE chat_id = ? LIMIT ?)"
const deleteEpochSql = "DELETE FROM epochs WHERE chat_id = ?"

const columns = `chat_id AS chatId, seq, id, author_id AS authorId, body, client_msg_id AS clientMsgId, created_at AS createdAt`

/** Rows deleted per transaction by deleteChat, so a huge chat never holds the event loop for long. */
const deleteRound = 1_000

const decodeRows = Schema.decodeUnknownEffect(Schema.Array(Message))

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
    after: db.prepare(`SELECT ${columns} FROM messages WHERE chat_id = ? AND seq > ? ORDER BY seq LIMIT ?`),
    before: db.prepare(`SELECT ${columns} FROM messages WHERE chat_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?`),
    latest: db.prepare(`SELECT ${columns} FROM messages WHERE chat_id = ? ORDER BY seq DESC LIMIT ?`),
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
        statements.put.run(m.chatId, m.seq, m.id, m.authorId, m.body, m.clientMsgId, m.createdAt)
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

  // Writes commit on a thread of their own (SqliteWriter.ts), so the fsync never holds the event loop.
  const sqliteWriter = yield* SqliteWriter.make(path)
  const write = (operation: string, steps: ReadonlyArray<SqliteWriter.Step>) =>
    sqliteWriter.run(steps).pipe(Effect.mapError(fail(operation)))

  // Group commit: the batches of every partition's sink that queued while
  // the last write ran go in one transaction, so they share one fsync.
  const pending = yield* Queue.unbounded<PendingBatch, Cause.Done>()
  const flush = (batches: ReadonlyArray<PendingBatch>) => {
    const steps: Array<SqliteWriter.Step> = []
    for (const batch of batches) {
      for (const m of batch.messages) {
        steps.push([putSql, [m.chatId, m.seq, m.id, m.authorId, m.body, m.clientMsgId, m.createdAt]])
      }
    }
    return write(`writing ${steps.length} messages`, steps).pipe(
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
  const putBatch = Effect.fn("MessageStore.putBatch")(function* (messages: ReadonlyArray<Message>) {
    if (messages.length === 0) return
    const done = yield* Deferred.make<void, MessageStoreError>()
    if (!(yield* Queue.offer(pending, { messages, done }))) {
      return yield* new MessageStoreError({ message: `message store ${path} is closed` })
    }
    yield* Deferred.await(done)
  })

  const page = Effect.fn("MessageStore.page")(function* (chatId: ChatId, pageQuery: PageQuery) {
    const limit = yield* validLimit(pageQuery.limit)
    return pageQuery.before !== undefined
      ? yield* query(`reading a page of chat ${chatId}`, statements.before, chatId, pageQuery.before, limit)
      : yield* query(`reading a page of chat ${chatId}`, statements.after, chatId, pageQuery.after ?? 0, limit)
  })

  const latest = Effect.fn("MessageStore.latest")(function* (chatId: ChatId, limit: number) {
    yield* validLimit(limit)
    return yield* query(`reading the latest messages of chat ${chatId}`, statements.latest, chatId, limit)
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
    let deleted: number
    do {
      deleted = (yield* write(operation, [[deleteSomeSql, [chatId, chatId, deleteRound]]]))[0] ?? 0
    } while (deleted > 0)
    yield* write(operation, [[deleteEpochSql, [chatId]]])
  })

  const ping = attempt("ping", () => statements.ping.get()).pipe(Effect.asVoid, Effect.withSpan("MessageStore.ping"))

  return {
    ...MessageStore.of({ putBatch, page, latest, epoch, deleteChat, ping }),
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
