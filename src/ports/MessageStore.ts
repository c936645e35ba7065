/**
 * The MessageStore port: the durable home of sequenced messages, keyed by
 * (chatId, seq). DynamoDB in cluster mode (DynamoMessageStore.ts, also run
 * against dynalite in tests), SQLite in embedded mode (SqliteMessageStore.ts).
 * All pass test/contract/MessageStore.contract.ts.
 */
import { Context, Schema } from "effect"
import type { Effect } from "effect"
import type { ChatId, Message } from "../schema/Domain.ts"

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
}

export class MessageStore extends Context.Service<
  MessageStore,
  {
    /**
     * Writes messages; idempotent (writing the same (chatId, seq) again
     * leaves one copy). Transient failures (throttling, unprocessed items)
     * are retried with backoff and jitter inside; the error means the batch
     * could not be written and nothing can be assumed about which part was.
     */
    readonly putBatch: (messages: ReadonlyArray<Message>) => Effect.Effect<void, MessageStoreError>
    /** A page of a chat's history: `before` → newest first; otherwise `after` (default 0) → oldest first. */
    readonly page: (chatId: ChatId, query: PageQuery) => Effect.Effect<ReadonlyArray<Message>, MessageStoreError>
    /** The newest `limit` messages of a chat, newest first (actor activation). */
    readonly latest: (chatId: ChatId, limit: number) => Effect.Effect<ReadonlyArray<Message>, MessageStoreError>
    /**
     * The chat's epoch: an id of its history, created with it and kept with
     * it. A store that lost a chat's history (wiped, a table recreated) has
     * lost the epoch too and answers a new one, so clients holding seqs of
     * the old history can tell they must reset.
     */
    readonly epoch: (chatId: ChatId) => Effect.Effect<string, MessageStoreError>
    /** Deletes every message of a chat (and its epoch); safe to repeat after a partial failure. */
    readonly deleteChat: (chatId: ChatId) => Effect.Effect<void, MessageStoreError>
    /** Answers when the store is reachable (readiness). */
    readonly ping: Effect.Effect<void, MessageStoreError>
  }
>()("harmony/ports/MessageStore") {}
