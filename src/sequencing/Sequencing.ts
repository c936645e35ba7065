/**
 * The actors role of a node: it joins the consumer group "actors" on
 * `chat.messages`; for every partition Kafka assigns it, a PartitionRunner
 * hosts that partition's chat actors. Sharding is Kafka's group assignment —
 * more nodes, more owners; a rebalance moves partitions, and with them actors.
 */
import { Duration, Effect, Layer } from "effect"
import type { SqlClient } from "effect/sql"
import { EventLog } from "../ports/EventLog.ts"
import type { MessageStore } from "../ports/MessageStore.ts"
import { Fanout } from "../messages/Fanout.ts"
import * as PartitionRunner from "./PartitionRunner.ts"
import * as PersistenceSink from "./PersistenceSink.ts"
import { ActorsGroup, MessagesTopic, topicRetry } from "../schema/Topics.ts"
import type { ActiveChats } from "./ActiveChats.ts"

export const defaultRunnerOptions: PartitionRunner.RunnerOptions = {
  actors: {
    mailboxSize: 1024,
    idleTimeout: Duration.minutes(5),
    dedupeWindow: 1000,
    ringSize: 256,
    // The dedupe window plus the largest batch a dying sink can leave half-written.
    restoreWindow: 1500
  },
  backlog: 1000,
  batchSize: 500,
  commitInterval: Duration.millis(200),
  drainTimeout: Duration.seconds(10)
}

export const layer = (options: {
  readonly partitions: number
  readonly runner?: PartitionRunner.RunnerOptions
  /** Overrides the runner's drain timeout (the node derives it from SHUTDOWN_TIMEOUT). */
  readonly drainTimeout?: Duration.Duration
}) =>
  Layer.effectDiscard(
    Effect.gen(function* () {
      const log = yield* EventLog
      const base = options.runner ?? defaultRunnerOptions
      const runner = options.drainTimeout === undefined ? base : { ...base, drainTimeout: options.drainTimeout }
      const fanout = yield* Fanout
      const context = yield* Effect.context<MessageStore | SqlClient.SqlClient | ActiveChats>()
      // Before joining the group, so it outlives the runners: their sinks drain into it on the way out.
      const lastSeqs = yield* PersistenceSink.makeLastSeqs()
      yield* log.createTopic(MessagesTopic, options.partitions).pipe(Effect.retry(topicRetry))
      yield* log.consume({
        group: ActorsGroup,
        topic: MessagesTopic,
        onClaim: (claim) => PartitionRunner.run(claim, runner, fanout, lastSeqs).pipe(Effect.provideContext(context))
      })
      yield* Effect.logInfo(`actors: joined group "${ActorsGroup}" on ${MessagesTopic}`)
    })
  )
