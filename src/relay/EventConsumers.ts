/**
 * The consumers of `chat.events`, each its own consumer group, each
 * idempotent (an event may arrive again after a crash or a rebalance):
 *
 * - cache invalidator: writes the fresh membership answers into the cache;
 * - gateway signals: `member_added`, `member_removed` and `chat_deleted`
 *   frames on the chat's fanout channel — every node's sessions react (a
 *   removed member's sessions leave the chat; a deleted chat's subscriptions
 *   close) — and deleted chats on the control channel for the actors;
 * - message store cleaner: deleting a chat deletes its messages (batched and
 *   resumable in the store adapter);
 * - user channel: the members' chat-list frames on their own channels
 *   (UserChannelSignals.ts).
 *
 * An event that does not decode goes to `chat.events.dlq` with the reason,
 * and the consumer moves on.
 *
 * Each event's handling is a consumer span (`<group>.<event type>`) under the
 * outbox relay's publish span named by the record's `traceparent` header;
 * each claim reports its consumer lag.
 */
import { Effect, Layer, Schema, Stream } from "effect"
import { EventLog, type LogRecord, type PartitionClaim } from "../ports/EventLog.ts"
import { MessageStore } from "../ports/MessageStore.ts"
import { PubSub } from "../ports/PubSub.ts"
import type { ChatId } from "../schema/Domain.ts"
import { EventEnvelope } from "../schema/Events.ts"
import { consumerLag, registerGauge } from "../Metrics.ts"
import { Membership } from "../state/Membership.ts"
import { parseTraceparent, TraceparentHeader } from "../Tracing.ts"
import { Fanout } from "../messages/Fanout.ts"
import { retryForever } from "../Retry.ts"
import { ControlChannel, encodeControlSignal } from "../schema/Control.ts"
import { DeadLetterTopic, EventsTopic, topicRetry } from "../schema/Topics.ts"
import { userChannelHandler } from "./UserChannelSignals.ts"

const decodeEnvelope = Schema.decodeUnknownEffect(Schema.fromJsonString(EventEnvelope))

type Handler = (envelope: EventEnvelope) => Effect.Effect<void, unknown>

/** Consumes `chat.events` in `group`: decode, handle (retrying until it succeeds), commit. */
const consumer = (group: string, handle: Handler) =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const deadLetter = (record: LogRecord, reason: string) =>
      log
        .produce(DeadLetterTopic, [
          {
            key: record.key,
            value: record.value,
            headers: { ...record.headers, "harmony-dlq-reason": reason, "harmony-dlq-group": group }
          }
        ])
        .pipe(Effect.retry(retryForever), Effect.orDie)

    const onRecord = (record: LogRecord) =>
      decodeEnvelope(new TextDecoder().decode(record.value)).pipe(
        Effect.matchEffect({
          onFailure: (error) =>
            Effect.logError(
              `${group}: undecodable event at ${record.partition}/${record.offset} sent to ${DeadLetterTopic}`
            ).pipe(Effect.andThen(deadLetter(record, error.message))),
          onSuccess: (envelope) =>
            handle(envelope).pipe(
              Effect.tapError((error) =>
                Effect.logWarning(`${group}: ${envelope.type} ${envelope.id} failed, retrying`, error)
              ),
              Effect.retry(retryForever),
              Effect.orDie,
              Effect.withSpan(`${group}.${envelope.type}`, {
                kind: "consumer",
                parent: parseTraceparent(record.headers[TraceparentHeader]),
                attributes: {
                  "messaging.system": "kafka",
                  "messaging.destination.name": record.topic,
                  "messaging.destination.partition.id": String(record.partition),
                  "messaging.kafka.offset": record.offset,
                  "messaging.consumer.group.name": group,
                  "harmony.event.id": envelope.id
                }
              })
            )
        })
      )

    const onClaim = (claim: PartitionClaim) =>
      Effect.gen(function* () {
        let position: number | undefined
        yield* registerGauge(
          consumerLag,
          () => (position === undefined ? 0 : Math.max(0, claim.endOffset() - position)),
          { group, topic: claim.topic, partition: String(claim.partition) }
        )
        yield* claim.records.pipe(
          Stream.runForEachArray((records) => {
            position ??= records[0]!.offset
            const next = records.at(-1)!.offset + 1
            return Effect.forEach(records, onRecord, { discard: true }).pipe(
              Effect.andThen(claim.commit(next)),
              Effect.tap(() =>
                Effect.sync(() => {
                  position = next
                })
              ),
              Effect.catchTag("EventLogError", (error) => Effect.logWarning(`${group}: commit failed`, error))
            )
          })
        )
      }).pipe(
        Effect.scoped,
        Effect.catchCause((cause) => Effect.logError(`${group}: partition ${claim.partition} failed`, cause))
      )

    yield* log.consume({ group, topic: EventsTopic, onClaim })
  })

const cacheInvalidator = Effect.gen(function* () {
  const membership = yield* Membership
  yield* consumer("cache-invalidator", (envelope) => {
    const event = envelope.payload
    switch (event._tag) {
      case "member.added":
      case "member.removed":
      case "member.role_changed":
        return membership.refresh(event.chatId, event.userId)
      case "chat.owner_changed":
        return membership.refresh(event.chatId, event.ownerId)
      case "chat.deleted":
        return Effect.forEach(event.memberIds, (userId) => membership.refresh(event.chatId, userId), { discard: true })
      default:
        return Effect.void
    }
  })
})

const gatewaySignals = Effect.gen(function* () {
  const fanout = yield* Fanout
  const pubsub = yield* PubSub
  yield* consumer("gateway-signals", (envelope) => {
    const event = envelope.payload
    switch (event._tag) {
      case "member.added":
        return fanout.publishFrame(event.chatId, undefined, {
          type: "member_added",
          chatId: event.chatId,
          userId: event.userId
        })
      case "member.removed":
        return fanout.publishFrame(event.chatId, undefined, {
          type: "member_removed",
          chatId: event.chatId,
          userId: event.userId
        })
      case "user.deleted":
        return pubsub.publish(ControlChannel, encodeControlSignal({ type: "user_deleted", userId: event.userId }))
      case "chat.deleted":
        return fanout
          .publishFrame(event.chatId, undefined, { type: "chat_deleted", chatId: event.chatId })
          .pipe(
            Effect.andThen(
              pubsub.publish(ControlChannel, encodeControlSignal({ type: "chat_deleted", chatId: event.chatId }))
            )
          )
      default:
        return Effect.void
    }
  })
})

const storeCleaner = Effect.gen(function* () {
  const store = yield* MessageStore
  yield* consumer("store-cleaner", (envelope) =>
    envelope.payload._tag === "chat.deleted" ? store.deleteChat(envelope.payload.chatId as ChatId) : Effect.void
  )
})

const userChannel = Effect.gen(function* () {
  yield* consumer("user-channel", yield* userChannelHandler)
})

export const layer = Layer.effectDiscard(
  Effect.gen(function* () {
    const log = yield* EventLog
    yield* log.createTopic(EventsTopic, 8).pipe(Effect.retry(topicRetry))
    yield* cacheInvalidator
    yield* gatewaySignals
    yield* storeCleaner
    yield* userChannel
    yield* Effect.logInfo(
      `event consumers: joined cache-invalidator, gateway-signals, store-cleaner, user-channel on ${EventsTopic}`
    )
  })
)
