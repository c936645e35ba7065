/**
 * The search indexer: its own consumer group ("search-indexer") on
 * `chat.messages`, keeping the full-text index (src/state/SearchIndex.ts)
 * current, and `reindex`, which rebuilds that index from the message store.
 *
 * A record on the log has no seq yet (the chat's actor gives it one), so the
 * indexer takes the messages from the chat's actor when it is active on this
 * node (RecentMessages), and from the store otherwise: for each chat in a
 * batch it reads the log entries past how far the index has read the chat
 * and adds the messages among them — the contiguous run only, never
 * past a gap — until every send of the batch is indexed — waiting, with backoff,
 * for the persistence sink when it is behind. Only then is the batch's
 * offset committed. Adding is idempotent by (chat, seq), so redelivery after
 * a crash or a rebalance changes nothing. A send whose chat is gone is
 * skipped: the actors drop those, and the chat's rows went with it.
 *
 * Edits and deletes are applied after the batch's catch-ups, in log order:
 * `SearchIndex.edit` replaces the indexed text (a deleted message stays
 * deleted), `SearchIndex.remove` drops it. Both overwrite, so applying them
 * again on redelivery (in log order again) ends the same. A record carries
 * its target's seq, so a change needs no store read; a change to a message
 * not indexed yet is covered by the catch-up, which reads the store's
 * current text. Reactions are not indexed.
 *
 * Index lag (`harmony_search_index_lag_seconds`) is the age of the oldest
 * record the indexer holds and has not indexed yet: 0 when it is caught up.
 */
import { Array as Arr, Clock, Console, Duration, Effect, Schedule, Layer, Metric, Schema, Stream } from "effect"
import { SqlClient } from "effect/sql"
import { consumerLag, registerGauge, searchIndexed, searchIndexLag } from "../Metrics.ts"
import { EventLog, type LogRecord, type PartitionClaim } from "../ports/EventLog.ts"
import { MessageStore } from "../ports/MessageStore.ts"
import { type ChatId, isChange, type Message } from "../schema/Domain.ts"
import { ChatRecordJson, isChangeRecord } from "../schema/Records.ts"
import { MessagesTopic, topicRetry } from "../schema/Topics.ts"
import { RecentMessages } from "./RecentMessages.ts"
import { type IndexedMessage, SearchIndex } from "../state/SearchIndex.ts"
import { backoff, retryForever } from "../Retry.ts"

export const SearchIndexerGroup = "search-indexer"

/**
 * Records are indexed in batches of up to this many, or what came within the
 * window: one store read and one index write per chat per batch, instead of
 * one per fetch (a few records each, under steady load).
 */
const BatchSize = 2_000
const BatchWindow = Duration.millis(250)

/** How long after a batch's catch-up its chats still missing sends are caught up again, and how many times. */
const SecondLookAfter = Duration.millis(50)
const SecondLooks = 3

/** Messages read from the store per page (the store's most). */
const PageSize = 100

/** Rows in one index write. */
const RowsPerWrite = 5_000

/** What the indexer does with a record of `chat.messages`. */
export type IndexerRecord =
  | { readonly _tag: "Send"; readonly chatId: ChatId; readonly id: string }
  | { readonly _tag: "Edit"; readonly chatId: ChatId; readonly seq: number; readonly body: string }
  | { readonly _tag: "Delete"; readonly chatId: ChatId; readonly seq: number }
  /** Nothing to index (a reaction). */
  | { readonly _tag: "Ignore" }
  | { readonly _tag: "Skip"; readonly reason: string }

const decodeChatRecord = Schema.decodeUnknownOption(ChatRecordJson)

/** A record as the indexer needs it: sends are caught up from the store, edits and deletes applied after. */
export const decodeRecord = (record: LogRecord): IndexerRecord => {
  const decoded = decodeChatRecord(new TextDecoder().decode(record.value))
  if (decoded._tag === "None") {
    return { _tag: "Skip", reason: `undecodable record at ${record.partition}/${record.offset}` }
  }
  const value = decoded.value
  if (!isChangeRecord(value)) return { _tag: "Send", chatId: value.chatId, id: value.id }
  switch (value.type) {
    case "message_edited":
      return { _tag: "Edit", chatId: value.chatId, seq: value.targetSeq, body: value.body }
    case "message_deleted":
      return { _tag: "Delete", chatId: value.chatId, seq: value.targetSeq }
    case "reaction":
      return { _tag: "Ignore" }
  }
}

const toIndexed = (message: Message): IndexedMessage => ({
  chatId: message.chatId,
  seq: message.seq,
  id: message.id,
  authorId: message.authorId,
  createdAt: message.createdAt,
  body: message.body ?? null
})

class NotYetStored extends Schema.TaggedError<NotYetStored>()("NotYetStored", { chatId: Schema.String }) {}

/** Longer than any sink takes to persist what the log holds, a stalled store's retries and a hand-over included. */
const GiveUpAfter = Duration.minutes(2)

/** The sink usually persists within tens of milliseconds: look again soon, then less often. */
const storeWait = (giveUpAfter: Duration.Duration) =>
  backoff("50 millis", "2 seconds").pipe(Schedule.upTo({ duration: giveUpAfter }))

/** Which of the chats still exist, in one statement. */
const existingChats = Effect.fnUntraced(function* (chatIds: ReadonlyArray<ChatId>) {
  if (chatIds.length === 0) return new Set<ChatId>()
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ id: ChatId }>`SELECT id FROM chats WHERE ${sql.in("id", chatIds)}`
  return new Set(rows.map((row) => row.id))
})

const chatExists = (chatId: ChatId) => Effect.map(existingChats([chatId]), (existing) => existing.has(chatId))

/**
 * How far the index has read each chat's log, as far as this claim knows:
 * the highest seq indexed, read from the index once per chat, then kept as
 * the claim reads on (only the partition's owner and `reindex` write a chat's
 * rows, and reindex never lowers what the store holds).
 */
type Watermarks = Map<ChatId, number>

/** Enough for every chat a partition sees in a while; beyond it, watermarks are read again. */
const MaxWatermarks = 10_000

/** A chat's unindexed messages (from its actor or the store), and how far that takes its watermark. */
interface Unindexed {
  readonly chatId: ChatId
  readonly messages: ReadonlyArray<Message>
  readonly upTo: number
  /** The page was full and contiguous: there may be more past `upTo`. */
  readonly more: boolean
}

/**
 * The next page of the chat's log past the watermark, the messages among
 * it. It reads the log's entries, not only its messages: the store can
 * hold a seq above a gap (a batch half written), and indexing past a gap would
 * move the watermark over messages still to come, so only the contiguous run
 * is taken.
 */
const nextPage = Effect.fnUntraced(function* (chatId: ChatId, watermarks: Watermarks) {
  const index = yield* SearchIndex
  const recent = yield* RecentMessages
  const after = watermarks.get(chatId) ?? (yield* index.watermark(chatId))
  // The chat's actor on this node holds its newest entries: read from there,
  // not the store (a store read costs the node more than several messages'
  // delivery). They may not be stored yet; a replay after a crash gives the
  // same records the same seqs, so the index never names another message.
  const held = recent.since(chatId, after)
  const fromActor = held !== undefined && held.length > 0
  const entries = fromActor ? held.slice(0, PageSize) : yield* (yield* MessageStore).entries(chatId, after, PageSize)
  const messages: Array<Message> = []
  let upTo = after
  for (const entry of entries) {
    if (entry.seq !== upTo + 1) break
    upTo = entry.seq
    if (!isChange(entry)) messages.push(entry)
  }
  const full = fromActor ? held.length > PageSize : entries.length === PageSize
  return { chatId, messages, upTo, more: full && upTo === entries.at(-1)?.seq }
})

/**
 * Adds the messages of the chats past their watermarks, a page of
 * each chat per round and one index write per round (on PGlite every
 * statement is a round trip through one connection, so a statement per chat
 * capped the indexer, and the log's back-pressure the senders). Answers the
 * ids it added; watermarks move only once their round is written.
 */
const catchUp = Effect.fnUntraced(function* (chatIds: Iterable<ChatId>, watermarks: Watermarks) {
  const index = yield* SearchIndex
  const added = new Set<string>()
  // Within Postgres's 65,535 parameters a statement (six a row).
  const write = (pages: ReadonlyArray<Unindexed>) =>
    Effect.forEach(
      Arr.chunksOf(
        pages.flatMap((page) => page.messages.map(toIndexed)),
        RowsPerWrite
      ),
      index.add,
      {
        discard: true
      }
    )
  let behind = Array.from(chatIds)
  while (behind.length > 0) {
    const read: ReadonlyArray<Unindexed> = yield* Effect.forEach(behind, (chatId) => nextPage(chatId, watermarks))
    const pages = yield* write(read).pipe(
      Effect.as(read),
      // A chat deleted meanwhile (its messages outlive it in the store and in
      // its actor for a while) fails the statement on its foreign key, and
      // would fail the batch for good: the round is written again without it.
      Effect.catchTag("SqlError", (error) =>
        Effect.gen(function* () {
          const existing = yield* existingChats(read.map((page) => page.chatId))
          const kept = read.filter((page) => existing.has(page.chatId))
          if (kept.length === read.length) return yield* error
          yield* write(kept)
          return kept
        })
      )
    )
    const messages = pages.flatMap((page) => page.messages)
    yield* Metric.update(searchIndexed, messages.length)
    if (watermarks.size + pages.length > MaxWatermarks) watermarks.clear()
    for (const page of pages) {
      watermarks.set(page.chatId, page.upTo)
      for (const message of page.messages) added.add(message.id)
    }
    behind = pages.filter((page) => page.more).map((page) => page.chatId)
  }
  return added
})

/**
 * Indexes the chat until it holds every one of `ids` (or the chat is gone).
 * Usually the store holds the batch's sends already and the index does not,
 * so catching up comes first; the index and the chat are looked up only when
 * something is still missing (a redelivered batch, a sink that is behind).
 *
 * The wait for the store is bounded: a send it never holds (dropped by the
 * chat's actor) must not hold the partition up for good. Past `GiveUpAfter`
 * the missing sends are logged and left to `harmony reindex`. A chat whose
 * store holds less than the index (its history wiped: a new epoch) is
 * indexed again from its first seq.
 */
const indexChat = (
  chatId: ChatId,
  ids: ReadonlyArray<string>,
  watermarks: Watermarks,
  giveUpAfter: Duration.Duration
) =>
  Effect.gen(function* () {
    const index = yield* SearchIndex
    const store = yield* MessageStore
    const added = yield* catchUp([chatId], watermarks)
    const missing = ids.filter((id) => !added.has(id))
    if (missing.length === 0) return
    const held = yield* index.holds(chatId, missing)
    if (missing.every((id) => held.has(id))) return
    if (!(yield* chatExists(chatId))) return
    const stored = (yield* store.latest(chatId, 1))[0]?.seq ?? 0
    if (stored < (watermarks.get(chatId) ?? 0)) {
      yield* Effect.logWarning(
        `search indexer: chat ${chatId} holds less than its index (a new epoch); indexing it again`
      )
      yield* index.dropAfter(chatId, 0)
      watermarks.delete(chatId)
    }
    return yield* new NotYetStored({ chatId })
  }).pipe(
    Effect.tapError((error) => Effect.logDebug(`search indexer: chat ${chatId} waits for the store`, error)),
    Effect.retry({ schedule: storeWait(giveUpAfter), while: (error) => error._tag === "NotYetStored" }),
    Effect.catchTag("NotYetStored", () =>
      Effect.logWarning(
        `search indexer: sends of chat ${chatId} not in the message store after ${Duration.format(giveUpAfter)}; not indexed (harmony reindex adds what the store holds)`
      )
    ),
    Effect.tapError((error) => Effect.logWarning(`search indexer: chat ${chatId} failed, retrying`, error)),
    Effect.retry(retryForever),
    Effect.orDie
  )

/** Indexes one batch of a partition's records (`giveUpAfter`: how long a send missing from the store is waited for). */
export const applyBatch = Effect.fnUntraced(function* (
  records: ReadonlyArray<LogRecord>,
  watermarks: Watermarks = new Map(),
  giveUpAfter: Duration.Duration = GiveUpAfter
) {
  const index = yield* SearchIndex
  const sends = new Map<ChatId, Array<string>>()
  const changes: Array<Extract<IndexerRecord, { _tag: "Edit" | "Delete" }>> = []
  for (const record of records) {
    const decoded = decodeRecord(record)
    switch (decoded._tag) {
      case "Skip":
        yield* Effect.logError(`search indexer: ${decoded.reason}, skipped`)
        continue
      case "Ignore":
        continue
      case "Edit":
      case "Delete":
        changes.push(decoded)
        continue
      case "Send": {
        const ids = sends.get(decoded.chatId)
        if (ids === undefined) sends.set(decoded.chatId, [decoded.id])
        else ids.push(decoded.id)
      }
    }
  }
  const added = new Set<string>()
  /** The batch's chats with sends not added yet. */
  const behind = () => Array.from(sends.keys()).filter((chatId) => sends.get(chatId)?.some((id) => !added.has(id)))
  const addAll = (chatIds: ReadonlyArray<ChatId>) =>
    catchUp(chatIds, watermarks).pipe(
      Effect.tapError((error) => Effect.logWarning("search indexer: a batch failed, retrying", error)),
      Effect.retry(retryForever),
      Effect.orDie,
      Effect.map((more) => {
        for (const id of more) added.add(id)
        return behind()
      })
    )
  // Usually the store, or the chat's actor here, holds the batch's sends
  // already: one catch-up for all its chats. The indexer reads the log beside
  // the actors, so the newest sends may not be sequenced yet: their chats are
  // caught up again together, a moment later, before any goes the way of
  // `indexChat` (a lookup in the index, one of the chat and a store read each).
  const laggards = yield* addAll(Array.from(sends.keys()))
  if (laggards.length > 0) {
    yield* Effect.suspend(() => addAll(behind())).pipe(
      Effect.delay(SecondLookAfter),
      Effect.repeat({ schedule: Schedule.spaced(SecondLookAfter), times: SecondLooks - 1, until: Arr.isArrayEmpty })
    )
  }
  for (const [chatId, ids] of sends) {
    const missing = ids.filter((id) => !added.has(id))
    if (missing.length > 0) yield* indexChat(chatId, missing, watermarks, giveUpAfter)
  }
  // After the catch-ups, in log order: each overwrites what the index holds of its target.
  for (const change of changes) {
    yield* (
      change._tag === "Edit"
        ? index.edit(change.chatId, change.seq, change.body)
        : index.remove(change.chatId, change.seq)
    ).pipe(
      Effect.tapError((error) =>
        Effect.logWarning(`search indexer: a change to chat ${change.chatId} failed, retrying`, error)
      ),
      Effect.retry(retryForever),
      Effect.orDie
    )
  }
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
    const watermarks: Watermarks = new Map()
    yield* claim.records.pipe(
      Stream.groupedWithin(BatchSize, BatchWindow),
      Stream.runForEach((records) =>
        Effect.gen(function* () {
          const first = records[0]
          const last = records.at(-1)
          if (first === undefined || last === undefined) return
          position ??= first.offset
          pending.set(claim.partition, first.timestamp)
          yield* applyBatch(records, watermarks)
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
      const context = yield* Effect.context<MessageStore | SearchIndex | SqlClient.SqlClient | RecentMessages>()
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
