/**
 * The search indexer: its own consumer group ("search-indexer") on
 * `chat.messages`, keeping the full-text index (src/state/SearchIndex.ts)
 * current, and `reindex`, which rebuilds that index from the message store.
 *
 * A record on the log has no seq yet (the chat's actor gives it one), so the
 * indexer takes the messages from the store: for each chat in a batch it
 * reads what the store holds past the index's highest seq for the chat and
 * adds it, until every send of the batch is indexed — waiting, with backoff,
 * for the persistence sink when it is behind. Only then is the batch's
 * offset committed. The index's highest seq per chat is kept between
 * batches and a batch's rows go in one INSERT, so a batch costs the SQL
 * database one statement, not a few per chat. Adding is idempotent by (chat, seq), so redelivery after
 * a crash or a rebalance changes nothing. A send whose chat is gone is
 * skipped: the actors drop those, and the chat's rows went with it.
 *
 * Edits and deletes, once the log carries them, are applied after their
 * chat's catch-up, in log order: `SearchIndex.edit` replaces the indexed
 * text, `SearchIndex.remove` drops it (see `decodeRecord`).
 *
 * Index lag (`harmony_search_index_lag_seconds`) is the age of the oldest
 * record the indexer holds and has not indexed yet: 0 when it is caught up.
 */
import { Clock, Console, Effect, Layer, Metric, Schema, Stream } from "effect"
import { SqlClient } from "effect/sql"
import { consumerLag, registerGauge, searchIndexed, searchIndexLag } from "../Metrics.ts"
import { EventLog, type LogRecord, type PartitionClaim } from "../ports/EventLog.ts"
import { MessageStore } from "../ports/MessageStore.ts"
import type { ChatId, Message } from "../schema/Domain.ts"
import { SendRecordJson } from "../schema/Records.ts"
import { MessagesTopic, topicRetry } from "../schema/Topics.ts"
import { type IndexedMessage, SearchIndex } from "../state/SearchIndex.ts"
import { backoff, retryForever } from "../Retry.ts"

export const SearchIndexerGroup = "search-indexer"

/** Messages read from the store per page (the store's most). */
const PageSize = 100

/** What the indexer does with a record of `chat.messages`. */
export type IndexerRecord =
  | { readonly _tag: "Send"; readonly chatId: ChatId; readonly id: string }
  | { readonly _tag: "Skip"; readonly reason: string }

const decodeSend = Schema.decodeUnknownOption(SendRecordJson)

/**
 * A record as the indexer needs it. The seam for edit and delete records:
 * they decode here to `Edit { chatId, seq, body }` / `Delete { chatId, seq }`
 * and are applied in `applyBatch` after the catch-ups.
 */
export const decodeRecord = (record: LogRecord): IndexerRecord => {
  const send = decodeSend(new TextDecoder().decode(record.value))
  return send._tag === "Some"
    ? { _tag: "Send", chatId: send.value.chatId, id: send.value.id }
    : { _tag: "Skip", reason: `undecodable record at ${record.partition}/${record.offset}` }
}

const toIndexed = (message: Message): IndexedMessage => ({
  chatId: message.chatId,
  seq: message.seq,
  id: message.id,
  authorId: message.authorId,
  createdAt: message.createdAt,
  body: message.body
})

class NotYetStored extends Schema.TaggedError<NotYetStored>()("NotYetStored", {
  chatIds: Schema.Array(Schema.String)
}) {}

/** The sink usually persists within milliseconds: look again soon, then less often. */
const storeWait = backoff("20 millis", "2 seconds")

/** Rows per INSERT: six bind parameters each, far below Postgres's 65,535. */
const InsertRows = 1_000

const chatExists = Effect.fnUntraced(function* (chatId: ChatId) {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql`SELECT 1 FROM chats WHERE id = ${chatId}`
  return rows.length > 0
})

/**
 * The index's highest seq per chat, as this indexer last saw or wrote it
 * (per claimed partition: only its owner indexes a chat). It may fall
 * behind the index — someone else indexed more, and re-adding is a no-op —
 * but never runs ahead of it: it moves only once an INSERT has committed.
 */
export class Watermarks {
  private readonly seqs = new Map<ChatId, number>()
  get(chatId: ChatId): number | undefined {
    return this.seqs.get(chatId)
  }
  set(chatId: ChatId, seq: number): void {
    this.seqs.delete(chatId)
    this.seqs.set(chatId, seq)
    // The least recently indexed chat goes first: it is read again when it comes back.
    if (this.seqs.size > MaxWatermarks) this.seqs.delete(this.seqs.keys().next().value as ChatId)
  }
}

/** Chats whose watermark an indexer keeps per partition. */
const MaxWatermarks = 10_000

/**
 * Adds the store's messages of the chats past the index's highest seq for
 * each; answers the ids it added. The chats' watermarks come from `known`
 * (one query for those it does not hold), and one INSERT per `InsertRows`
 * rows serves every chat: on PGlite every statement costs the event loop a
 * round trip through the Postgres protocol.
 */
const catchUp = Effect.fnUntraced(function* (chatIds: ReadonlyArray<ChatId>, known: Watermarks) {
  const store = yield* MessageStore
  const index = yield* SearchIndex
  const unknown = chatIds.filter((chatId) => known.get(chatId) === undefined)
  const read = yield* index.watermarks(unknown)
  for (const chatId of unknown) known.set(chatId, read.get(chatId) ?? 0)
  const added = new Set<string>()
  let rows: Array<IndexedMessage> = []
  const flush = Effect.suspend(() => {
    const batch = rows
    rows = []
    return index.add(batch).pipe(
      Effect.andThen(
        Effect.sync(() => {
          for (const row of batch) if (row.seq > (known.get(row.chatId) ?? 0)) known.set(row.chatId, row.seq)
        })
      ),
      Effect.andThen(Metric.update(searchIndexed, batch.length))
    )
  })
  for (const chatId of chatIds) {
    let after = known.get(chatId) ?? 0
    while (true) {
      const page = yield* store.page(chatId, { after, limit: PageSize })
      for (const message of page) {
        rows.push(toIndexed(message))
        added.add(message.id)
      }
      if (rows.length >= InsertRows) yield* flush
      const last = page.at(-1)
      if (page.length < PageSize || last === undefined) break
      after = last.seq
    }
  }
  if (rows.length > 0) yield* flush
  return added
})

/**
 * Indexes the chats until the index holds every one of their sends (or the
 * chat is gone). A send the catch-up did not find was indexed before (a
 * redelivery), or its chat is gone, or the store is behind: only the last
 * is waited for, and only those chats are looked at again.
 */
const indexChats = (sends: ReadonlyMap<ChatId, ReadonlyArray<string>>, known: Watermarks) => {
  let waiting = sends
  return Effect.gen(function* () {
    const index = yield* SearchIndex
    const added = yield* catchUp([...waiting.keys()], known)
    const left = new Map<ChatId, ReadonlyArray<string>>()
    for (const [chatId, ids] of waiting) {
      const missing = ids.filter((id) => !added.has(id))
      if (missing.length === 0) continue
      const held = yield* index.holds(chatId, missing)
      if (missing.every((id) => held.has(id))) continue
      if (!(yield* chatExists(chatId))) continue
      left.set(chatId, missing)
    }
    waiting = left
    if (left.size > 0) return yield* new NotYetStored({ chatIds: [...left.keys()] })
  }).pipe(
    Effect.tapError((error) =>
      Effect.logDebug(
        `search indexer: ${error._tag === "NotYetStored" ? `chats ${error.chatIds.join(", ")}` : "a batch"} waits for the store`,
        error
      )
    ),
    Effect.retry({ schedule: storeWait, while: (error) => error._tag === "NotYetStored" }),
    Effect.tapError((error) => Effect.logWarning("search indexer: indexing a batch failed, retrying", error)),
    Effect.retry(retryForever),
    Effect.orDie
  )
}

/** Indexes one batch of a partition's records; `known`: the partition's watermarks, kept between batches. */
export const applyBatch = Effect.fnUntraced(function* (
  records: ReadonlyArray<LogRecord>,
  known: Watermarks = new Watermarks()
) {
  const sends = new Map<ChatId, Array<string>>()
  for (const record of records) {
    const decoded = decodeRecord(record)
    if (decoded._tag === "Skip") {
      yield* Effect.logError(`search indexer: ${decoded.reason}, skipped`)
      continue
    }
    const ids = sends.get(decoded.chatId)
    if (ids === undefined) sends.set(decoded.chatId, [decoded.id])
    else ids.push(decoded.id)
  }
  if (sends.size > 0) yield* indexChats(sends, known)
  // Edits and deletes are applied here, in log order, once they are on the log.
})

/** `pending`: the oldest unindexed record's timestamp per claimed partition (absent: caught up). */
const onClaim = (pending: Map<number, number>) => (claim: PartitionClaim) =>
  Effect.gen(function* () {
    let position: number | undefined
    yield* registerGauge(consumerLag, () => (position === undefined ? 0 : Math.max(0, claim.endOffset() - position)), {
      group: SearchIndexerGroup,
      topic: claim.topic,
      partition: String(claim.partition)
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => pending.delete(claim.partition)))
    const known = new Watermarks()
    yield* claim.records.pipe(
      Stream.runForEachArray((records) =>
        Effect.gen(function* () {
          const first = records[0]
          const last = records.at(-1)
          if (first === undefined || last === undefined) return
          position ??= first.offset
          pending.set(claim.partition, first.timestamp)
          yield* applyBatch(records, known)
          pending.delete(claim.partition)
          yield* claim.commit(last.offset + 1).pipe(
            Effect.tap(() =>
              Effect.sync(() => {
                position = last.offset + 1
              })
            ),
            Effect.catchTag("EventLogError", (error) => Effect.logWarning("search indexer: commit failed", error))
          )
        })
      )
    )
  }).pipe(
    Effect.scoped,
    Effect.catchCause((cause) => Effect.logError(`search indexer: partition ${claim.partition} failed`, cause))
  )

/** Joins the indexer group on `chat.messages` for the node's lifetime. */
export const layer = (options: { readonly partitions: number }) =>
  Layer.effectDiscard(
    Effect.gen(function* () {
      const log = yield* EventLog
      yield* log.createTopic(MessagesTopic, options.partitions).pipe(Effect.retry(topicRetry))
      const pending = new Map<number, number>()
      const context = yield* Effect.context<MessageStore | SearchIndex | SqlClient.SqlClient>()
      yield* registerGauge(searchIndexLag, () => {
        let oldest = Number.POSITIVE_INFINITY
        for (const timestamp of pending.values()) oldest = Math.min(oldest, timestamp)
        return oldest === Number.POSITIVE_INFINITY ? 0 : Math.max(0, (Date.now() - oldest) / 1000)
      })
      yield* log.consume({
        group: SearchIndexerGroup,
        topic: MessagesTopic,
        onClaim: (claim) => onClaim(pending)(claim).pipe(Effect.provideContext(context))
      })
      yield* Effect.logInfo(`search indexer: joined ${SearchIndexerGroup} on ${MessagesTopic}`)
    })
  )

/**
 * Rebuilds the index from the message store: every chat, every message as
 * the store holds it now, rows the store no longer holds dropped. Safe while
 * nodes run (the indexer's writes are idempotent); progress goes to stdout.
 */
export const reindex = Effect.fn("SearchIndexer.reindex")(function* () {
  const sql = yield* SqlClient.SqlClient
  const store = yield* MessageStore
  const index = yield* SearchIndex
  const chats = yield* sql<{ id: ChatId }>`SELECT id FROM chats ORDER BY id`
  const started = yield* Clock.currentTimeMillis
  let messages = 0
  let done = 0
  for (const { id: chatId } of chats) {
    let after = 0
    while (true) {
      const page = yield* store.page(chatId, { after, limit: PageSize }).pipe(Effect.retry(retryForever))
      yield* index.replace(page.map(toIndexed))
      messages += page.length
      const last = page.at(-1)
      if (last !== undefined) after = last.seq
      if (page.length < PageSize) break
    }
    yield* index.dropAfter(chatId, after)
    done++
    if (done % 100 === 0 || done === chats.length) {
      const seconds = ((yield* Clock.currentTimeMillis) - started) / 1000
      yield* Console.log(
        `reindex: ${done}/${chats.length} chats, ${messages} messages (${Math.round(messages / Math.max(seconds, 0.001))}/s)`
      )
    }
  }
  return { chats: chats.length, messages }
})
