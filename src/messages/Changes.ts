/**
 * Edits, deletes and reactions (docs/protocol.md "Edits, deletes and
 * reactions"): admitted here — the caller must be a member, the target a
 * message of the chat that is not deleted, and the caller allowed to make
 * the change — then put on the chat's log like a send (Ingest.change), where
 * the chat's actor gives each its own seq. A change is idempotent by its
 * Idempotency-Key: a retry with the same key has the same id, and the actor
 * sequences it once.
 */
import { Clock, Context, Data, Duration, Effect, Layer, Option, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { MessageStore, type MessageStoreError } from "../ports/MessageStore.ts"
import type { ChatId, Message, MessageId, Role, UserId } from "../schema/Domain.ts"
import { Forbidden, NotFound, type RateLimited, Unavailable } from "../schema/Errors.ts"
import { type ChangeRecord, changeIdOf } from "../schema/Records.ts"
import { Membership } from "../state/Membership.ts"
import { RateLimits } from "../state/RateLimits.ts"
import { memberRole } from "./ChatRules.ts"
import { Ingest } from "./Ingest.ts"

export interface ChangeAccepted {
  readonly id: MessageId
}

export type ChangeError = NotFound | Forbidden | RateLimited | Unavailable

/**
 * How long admission waits for a message the store does not hold yet: a
 * client reacts to a message the moment it arrives live, and the sink may be
 * seconds behind under load (as long as a send may wait for the log).
 */
const targetWait = Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: Duration.seconds(5) }))

/** The target seq is past what the store holds: maybe a message just sent. */
class NotStoredYet extends Data.TaggedError("NotStoredYet") {}

const storeUnavailable = (error: MessageStoreError) =>
  Effect.logWarning("message store unavailable", error).pipe(
    Effect.andThen(Effect.fail(new Unavailable({ message: "message history is unavailable, try again" })))
  )

export class Changes extends Context.Service<
  Changes,
  {
    /** The author edits their message: its body becomes `body`. */
    readonly edit: (
      userId: UserId,
      chatId: ChatId,
      seq: number,
      body: string,
      key: string | undefined
    ) => Effect.Effect<ChangeAccepted, ChangeError>
    /** The author, or the chat's owner or an admin, deletes a message. */
    readonly delete: (
      userId: UserId,
      chatId: ChatId,
      seq: number,
      key: string | undefined
    ) => Effect.Effect<ChangeAccepted, ChangeError>
    /** A member adds (`added`) or removes their reaction `emoji` on a message. */
    readonly react: (
      userId: UserId,
      chatId: ChatId,
      seq: number,
      emoji: string,
      added: boolean,
      key: string | undefined
    ) => Effect.Effect<ChangeAccepted, ChangeError>
  }
>()("harmony/messages/Changes") {
  static readonly layer = Layer.effect(
    Changes,
    Effect.gen(function* () {
      const ingest = yield* Ingest
      const membership = yield* Membership
      const limits = yield* RateLimits
      const store = yield* MessageStore

      const notFound = (chatId: ChatId, seq: number) =>
        new NotFound({ message: `message ${seq} of chat ${chatId} not found` })

      const lookUp = Effect.fnUntraced(function* (chatId: ChatId, seq: number) {
        const found = yield* store.message(chatId, seq).pipe(Effect.catchTag("MessageStoreError", storeUnavailable))
        if (Option.isSome(found)) {
          if (found.value.deletedAt !== undefined) return yield* notFound(chatId, seq)
          return found.value
        }
        const latest = yield* store.latest(chatId, 1).pipe(Effect.catchTag("MessageStoreError", storeUnavailable))
        if (seq <= (latest[0]?.seq ?? 0)) return yield* notFound(chatId, seq)
        return yield* new NotStoredYet()
      })
      /**
       * The message at `seq`, not deleted. A seq past what the store holds
       * may be a message just sent: it is given a moment to arrive.
       */
      const target = (chatId: ChatId, seq: number) =>
        lookUp(chatId, seq).pipe(
          Effect.retry({ schedule: targetWait, while: (error) => error._tag === "NotStoredYet" }),
          Effect.catchTag("NotStoredYet", () => Effect.fail(notFound(chatId, seq)))
        )

      /** Admits a change by `userId` to message `seq`: membership, the target, then `allowed`; then logs it. */
      const admit = Effect.fnUntraced(function* (
        userId: UserId,
        chatId: ChatId,
        seq: number,
        key: string | undefined,
        allowed: (message: Message, role: Role) => boolean,
        record: (id: MessageId, at: string) => ChangeRecord
      ) {
        yield* limits.take("send", userId)
        const role = yield* memberRole(membership, chatId, userId)
        const message = yield* target(chatId, seq)
        if (!allowed(message, role)) {
          return yield* new Forbidden({ message: `you may not change message ${seq} of chat ${chatId}` })
        }
        // Without a key the server makes one: a retry is then another change.
        const id = changeIdOf(chatId, userId, key ?? randomUUID())
        const at = new Date(yield* Clock.currentTimeMillis).toISOString()
        yield* ingest.change(record(id, at))
        return { id }
      })

      return Changes.of({
        edit: (userId, chatId, seq, body, key) =>
          admit(
            userId,
            chatId,
            seq,
            key,
            (message) => message.authorId === userId,
            (id, at) => ({ type: "message_edited", chatId, id, targetSeq: seq, userId, body, editedAt: at })
          ),
        delete: (userId, chatId, seq, key) =>
          admit(
            userId,
            chatId,
            seq,
            key,
            (message, role) => message.authorId === userId || role === "owner" || role === "admin",
            (id, at) => ({ type: "message_deleted", chatId, id, targetSeq: seq, userId, deletedAt: at })
          ),
        react: (userId, chatId, seq, emoji, added, key) =>
          admit(
            userId,
            chatId,
            seq,
            key,
            () => true,
            (id) => ({ type: "reaction", chatId, id, targetSeq: seq, userId, emoji, added })
          )
      })
    })
  )
}
