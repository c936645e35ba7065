/**
 * The MessageStore port: the durable home of a chat's log, keyed by
 * (chatId, seq) — its messages, and the changes to them (edits, deletes,
 * reactions), each at a seq of its own. A change is also applied to its
 * target, idempotently and whatever the order: per part of the message's
 * state (its body, its deletion, each user's each emoji) the change with the
 * highest seq wins — the earliest, for a deletion — so writing a batch again,
 * or a batch that overlaps an earlier one, always ends in the state of the
 * log applied once in seq order.
 *
 * DynamoDB in cluster mode (DynamoMessageStore.ts, also run against dynalite
 * in tests), SQLite in embedded mode (SqliteMessageStore.ts). All pass
 * test/contract/MessageStore.contract.ts.
 */
import { Context, Schema } from "effect"
import type { Effect, Option } from "effect"
import type { ChatId, LogEntry, Message, UserId } from "../schema/Domain.ts"

export class MessageStoreError extends Schema.TaggedError<MessageStoreError>()("MessageStoreError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

export interface PageQuery {
  /** Messages with seq < before, newest first. */
  readonly before?: number | undefined
  /** Messages with seq > after, oldest first. Ignored when `before` is set. */
  readonly after?: number | undefined
  /** 1..100 */
  readonly limit: number
  /** Whose reactions count as `me`; without it, messages come without reactions. */
  readonly viewer?: UserId | undefined
}

export class MessageStore extends Context.Service<
  MessageStore,
  {
    /**
     * Writes log entries and applies the changes among them to their
     * targets; idempotent (writing the same (chatId, seq) again leaves one
     * copy, and applies nothing twice). A change is applied before it is
     * written, so a change that is in the store has been applied. Transient
     * failures (throttling, unprocessed items) are retried with backoff and
     * jitter inside; the error means the batch could not be written and
     * nothing can be assumed about which part was.
     */
    readonly putBatch: (entries: ReadonlyArray<LogEntry>) => Effect.Effect<void, MessageStoreError>
    /**
     * A page of a chat's history, messages only (change seqs are skipped),
     * each as it is now (edited, a tombstone), with its reactions counted for
     * `viewer`: `before` → newest first; otherwise `after` (default 0) → oldest first.
     */
    readonly page: (chatId: ChatId, query: PageQuery) => Effect.Effect<ReadonlyArray<Message>, MessageStoreError>
    /**
     * The log entries with seq > after, oldest first, at most `limit`:
     * messages as they are now (without reactions), changes as written (recovery).
     */
    readonly entries: (
      chatId: ChatId,
      after: number,
      limit: number
    ) => Effect.Effect<ReadonlyArray<LogEntry>, MessageStoreError>
    /** The newest `limit` log entries of a chat, newest first (actor activation). */
    readonly latest: (chatId: ChatId, limit: number) => Effect.Effect<ReadonlyArray<LogEntry>, MessageStoreError>
    /** The message at `seq` as it is now (without reactions); none when that seq is not a message. */
    readonly message: (chatId: ChatId, seq: number) => Effect.Effect<Option.Option<Message>, MessageStoreError>
    /**
     * The chat's epoch: an id of its history, created with it and kept with
     * it. A store that lost a chat's history (wiped, a table recreated) has
     * lost the epoch too and answers a new one, so clients holding seqs of
     * the old history can tell they must reset.
     */
    readonly epoch: (chatId: ChatId) => Effect.Effect<string, MessageStoreError>
    /** Deletes every entry of a chat (and its epoch); safe to repeat after a partial failure. */
    readonly deleteChat: (chatId: ChatId) => Effect.Effect<void, MessageStoreError>
    /** Answers when the store is reachable (readiness). */
    readonly ping: Effect.Effect<void, MessageStoreError>
  }
>()("harmony/ports/MessageStore") {}

/** Log entries of two sources (messages, changes) merged by seq: ascending or descending, at most `limit`. */
export const mergeBySeq = (
  a: ReadonlyArray<LogEntry>,
  b: ReadonlyArray<LogEntry>,
  descending: boolean,
  limit: number
): Array<LogEntry> => [...a, ...b].sort((x, y) => (descending ? y.seq - x.seq : x.seq - y.seq)).slice(0, limit)
