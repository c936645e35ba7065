/**
 * The kafkajs client of the process and what every part of the adapter
 * shares with it: the settings its consumers are made with, the admin
 * client, and how its log lines and detached work reach Effect's runtime.
 */
import { Effect, type Fiber, type Scope } from "effect"
import { type Admin, type Consumer, Kafka, type LogEntry, logLevel, type PartitionAssigner } from "kafkajs"
import type { EventLogError } from "../../ports/EventLog.ts"
import { attempt, kafkaRetry } from "./errors.ts"

export interface ClientSettings {
  readonly brokers: ReadonlyArray<string>
  readonly clientId: string
  readonly sessionTimeout: number
  readonly heartbeatInterval: number
  readonly rebalanceTimeout: number
  /** Longest a fetch waits for records; also bounds how late a resumed partition is fetched. */
  readonly maxWaitTime: number
}

export interface KafkaClient {
  readonly kafka: Kafka
  readonly admin: Admin
  readonly settings: ClientSettings
  /** "Kafka at host:port,...", for messages. */
  readonly where: string
  /** Runs an effect detached, with the layer's services (kafkajs calls back outside any fiber). */
  readonly runDetached: <A, E>(effect: Effect.Effect<A, E>) => Fiber.Fiber<A, E>
  /** Disconnects a kafkajs client, logging (not failing) when it cannot. */
  readonly disconnect: (what: string, client: { disconnect: () => Promise<void> }) => Effect.Effect<void>
  /** A consumer of `groupId` with the adapter's settings, its own assigner, and whether a crash rejoins. */
  readonly consumer: (options: {
    readonly groupId: string
    readonly assigner: PartitionAssigner
    readonly restartOnFailure: boolean
  }) => Consumer
}

export const make = (settings: ClientSettings): Effect.Effect<KafkaClient, EventLogError, Scope.Scope> =>
  Effect.gen(function* () {
    const brokers = [...settings.brokers]
    const clientId = settings.clientId
    const where = `Kafka at ${brokers.join(",")}`
    const services = yield* Effect.context<never>()
    const runDetached = Effect.runForkWith(services)
    const kafka = new Kafka({
      brokers,
      clientId,
      connectionTimeout: 3_000,
      retry: kafkaRetry,
      // kafkajs logs its retries and rebalances at error level as a matter of
      // course, and the adapter reports real failures as EventLogErrors, so
      // these are warnings in Effect's log; the error responses its
      // connections log (rebalancing, topic exists, ...) are handled above
      // them and only debug.
      logLevel: logLevel.ERROR,
      logCreator:
        () =>
        ({ namespace, log }: LogEntry) => {
          const { message, timestamp: _timestamp, logger: _logger, ...extra } = log
          const text = `kafkajs ${namespace}: ${message}`
          const entry = namespace === "Connection" ? Effect.logDebug(text) : Effect.logWarning(text)
          runDetached(entry.pipe(Effect.annotateLogs(extra)))
        }
    })

    const disconnect = (what: string, client: { disconnect: () => Promise<void> }) =>
      attempt(`disconnecting the ${what} from ${where}`, () => client.disconnect()).pipe(
        Effect.catch((error) => Effect.logWarning(error.message))
      )

    const admin: Admin = yield* Effect.acquireRelease(
      Effect.suspend(() => {
        const client = kafka.admin({ retry: kafkaRetry })
        return attempt(`connecting the admin client to ${where}`, () => client.connect()).pipe(Effect.as(client))
      }),
      (client) => disconnect("admin client", client)
    )

    const consumer: KafkaClient["consumer"] = ({ groupId, assigner, restartOnFailure }) =>
      kafka.consumer({
        groupId,
        partitionAssigners: [assigner],
        sessionTimeout: settings.sessionTimeout,
        rebalanceTimeout: settings.rebalanceTimeout,
        heartbeatInterval: settings.heartbeatInterval,
        maxWaitTimeInMs: settings.maxWaitTime,
        allowAutoTopicCreation: false,
        retry: { ...kafkaRetry, restartOnFailure: async () => restartOnFailure }
      })

    return { kafka, admin, settings, where, runDetached, disconnect, consumer }
  })
