/**
 * Ingest: an authorized send becomes a record on Kafka `chat.messages`,
 * keyed by chat id, and is acknowledged only once the log holds it
 * (PROTOCOL.md: `ack` once Kafka has it). Concurrent sends are produced
 * together: while one produce is in flight, the next ones gather into the
 * following batch, so throughput does not pay one round trip per message.
 */
import { Clock, Context, Deferred, Effect, Exit, Layer, Metric, Queue } from "effect"
import { messagesAccepted } from "../Metrics.ts"
import { EventLog, type EventLogError, type ProduceRecord } from "../infra/EventLog.ts"
import type { ChatId, MessageId, UserId } from "../schema/Domain.ts"
import { NotFound, type RateLimited, Unavailable } from "../schema/Errors.ts"
import { encodeSendRecord, messageIdOf } from "../schema/Records.ts"
import { Membership } from "../state/Membership.ts"
import { RateLimits } from "../state/RateLimits.ts"
import { MessagesTopic } from "./Topics.ts"

export interface Accepted {
  readonly id: MessageId
  readonly clientMsgId: string
}

interface Pending {
  readonly record: ProduceRecord
  readonly done: Deferred.Deferred<void, EventLogError>
}

/** The most records in one produce request. */
const MaxBatch = 500

export class Ingest extends Context.Service<
  Ingest,
  {
    readonly send: (
      authorId: UserId,
      chatId: ChatId,
      clientMsgId: string,
      body: string
    ) => Effect.Effect<Accepted, NotFound | RateLimited | Unavailable>
  }
>()("harmony/streams/Ingest") {
  static readonly layer = Layer.effect(
    Ingest,
    Effect.gen(function* () {
      const log = yield* EventLog
      const membership = yield* Membership
      const limits = yield* RateLimits
      const queue = yield* Queue.unbounded<Pending>()

      yield* Queue.takeBetween(queue, 1, MaxBatch).pipe(
        Effect.flatMap((batch) =>
          log
            .produce(
              MessagesTopic,
              batch.map((pending) => pending.record)
            )
            .pipe(
              Effect.exit,
              Effect.flatMap((exit) => {
                const outcome = Exit.asVoid(exit)
                return Effect.forEach(batch, (pending) => Deferred.done(pending.done, outcome))
              })
            )
        ),
        Effect.forever,
        Effect.forkScoped
      )

      const send = Effect.fn("Ingest.send")(function* (
        authorId: UserId,
        chatId: ChatId,
        clientMsgId: string,
        body: string
      ) {
        yield* limits.take("send", authorId)
        const role = yield* membership.roleOf(chatId, authorId)
        if (role._tag === "None") return yield* new NotFound({ message: `chat ${chatId} not found` })
        const id = messageIdOf(chatId, authorId, clientMsgId)
        const sentAt = new Date(yield* Clock.currentTimeMillis).toISOString()
        const done = yield* Deferred.make<void, EventLogError>()
        yield* Queue.offer(queue, {
          record: { key: chatId, value: encodeSendRecord({ id, chatId, authorId, clientMsgId, body, sentAt }) },
          done
        })
        yield* Deferred.await(done).pipe(
          Effect.catchTag("EventLogError", (error) =>
            Effect.logWarning("produce failed: the send is not acknowledged", error).pipe(
              Effect.andThen(Effect.fail(new Unavailable({ message: "the message log is unavailable, try again" })))
            )
          )
        )
        yield* Metric.update(messagesAccepted, 1)
        return { id, clientMsgId }
      })

      return Ingest.of({ send })
    })
  )
}
