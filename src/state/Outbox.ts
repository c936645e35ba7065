/**
 * The transactional outbox: `append` writes state events into the `outbox`
 * table with the caller's SQL connection, so it commits or rolls back with the
 * state change itself. Publication to Kafka is the outbox relay's job.
 */
import { Array as Arr, Clock, Context, Effect, Layer, Schema } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { randomUUID } from "node:crypto"
import { aggregateOf, EventVersion, StateEvent } from "../schema/Events.ts"

const encodeEvent = Schema.encodeSync(StateEvent)

/** The NOTIFY channel an outbox append signals on. */
export const OutboxChannel = "harmony_outbox"

export class Outbox extends Context.Service<
  Outbox,
  {
    /** Must run inside the transaction of the change it records. */
    readonly append: (events: ReadonlyArray<StateEvent>) => Effect.Effect<void, SqlError>
  }
>()("harmony/state/Outbox") {
  static readonly layer = Layer.effect(
    Outbox,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const append = Effect.fn("Outbox.append")(function* (events: ReadonlyArray<StateEvent>) {
        if (!Arr.isReadonlyArrayNonEmpty(events)) return
        const now = new Date(yield* Clock.currentTimeMillis)
        yield* sql`INSERT INTO outbox ${sql.insert(
          Arr.map(events, (event) => ({
            event_id: randomUUID(),
            aggregate_id: aggregateOf(event),
            type: event._tag,
            version: EventVersion,
            payload: JSON.stringify(encodeEvent(event)),
            created_at: now
          }))
        )}`
        // Delivered at commit: wakes the outbox relay (it polls as well).
        yield* sql`SELECT pg_notify(${OutboxChannel}, '')`
      })
      return Outbox.of({ append })
    })
  )
}
