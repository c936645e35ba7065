/**
 * Harmony's configuration, decoded from the environment (README
 * "Configuration", docs/operations.md). The four service URLs choose the
 * mode: none → embedded, all four → cluster; anything in between is an
 * error that names what is missing.
 */
import { Config, Duration, Effect, Option, Redacted, Schema, SchemaTransformation } from "effect"
import type { TokenBucket } from "./ports/Cache.ts"
import { type FrameLimits, defaultFrameLimits, defaultGatewayLimits, type GatewayLimits } from "./gateway/Limits.ts"
import {
  bucketProblem,
  defaultRateLimits,
  type Limit,
  type RateLimitSettings,
  rateLimitVariables
} from "./state/RateLimits.ts"
import { defaultSearchLimits } from "./state/SearchIndex.ts"

export class ConfigurationError extends Schema.TaggedError<ConfigurationError>()("ConfigurationError", {
  message: Schema.String
}) {}

export interface ClusterServices {
  readonly databaseUrl: Redacted.Redacted<string>
  readonly kafkaBrokers: ReadonlyArray<string>
  readonly redisUrl: Redacted.Redacted<string>
  readonly dynamodbEndpoint: string
}

export type Mode =
  | { readonly _tag: "Embedded"; readonly dataDir: string }
  | { readonly _tag: "Cluster"; readonly services: ClusterServices }

export interface HarmonyConfig {
  readonly mode: Mode
  readonly port: number
  readonly host: string
  readonly dataDir: string
  /** Absent in embedded mode: a development secret is generated then. */
  readonly jwtSecret: Option.Option<Redacted.Redacted<string>>
  readonly accessTokenTtl: Duration.Duration
  readonly refreshTokenTtl: Duration.Duration
  readonly messagesTable: string
  readonly awsRegion: string
  readonly kafkaPartitions: number
  readonly shutdownTimeout: Duration.Duration
  /** How long a send waits for the message log before it is answered `unavailable`. */
  readonly sendTimeout: Duration.Duration
  readonly rateLimits: RateLimitSettings
  /** Per-connection frame limits and the gateway's caps on sockets and subscriptions. */
  readonly frameLimits: FrameLimits
  readonly gatewayLimits: GatewayLimits
  /** Where `/metrics` is served: the main port (the default) or a port of its own. */
  readonly metricsPort: number
  /** How long a silent node keeps its Kafka partitions (and so its chats) before the group moves them. */
  readonly kafkaSessionTimeout: Duration.Duration
  readonly presenceTtl: Duration.Duration
  /** How much one message search may cost (SEARCH_TIMEOUT, SEARCH_MAX_MATCHES; the timeout holds in cluster mode only). */
  readonly searchLimits: { readonly timeout: Duration.Duration; readonly maxMatches: number }
}

/** A token bucket as `capacity/refillPerSecond`, e.g. `100/50`. */
const BucketSpec = Schema.String.pipe(
  Schema.check(Schema.isPattern(/^\d+\/\d+(\.\d+)?$/, { message: "expected capacity/refillPerSecond, e.g. 100/50" })),
  Schema.decodeTo(
    Schema.Struct({ capacity: Schema.Int, refillPerSecond: Schema.Number }),
    SchemaTransformation.transform({
      decode: (spec: string) => {
        const [capacity, refill] = spec.split("/")
        return { capacity: Number(capacity), refillPerSecond: Number(refill) }
      },
      encode: (bucket: { readonly capacity: number; readonly refillPerSecond: number }) =>
        `${bucket.capacity}/${bucket.refillPerSecond}`
    })
  )
)
const bucket = (name: string, fallback: TokenBucket) =>
  Config.schema(BucketSpec, name).pipe(Config.withDefault(fallback))

const serviceVariables = ["DATABASE_URL", "KAFKA_BROKERS", "REDIS_URL", "DYNAMODB_ENDPOINT"] as const

const optionalString = (name: string) =>
  Config.option(Config.String(name)).pipe(Config.map(Option.filter((value) => value.trim() !== "")))

const raw = Config.all({
  port: Config.Port("PORT").pipe(Config.withDefault(8080)),
  host: Config.String("HOST").pipe(Config.withDefault("0.0.0.0")),
  dataDir: Config.String("HARMONY_DATA_DIR").pipe(Config.withDefault("./.harmony")),
  databaseUrl: optionalString("DATABASE_URL"),
  kafkaBrokers: optionalString("KAFKA_BROKERS"),
  redisUrl: optionalString("REDIS_URL"),
  dynamodbEndpoint: optionalString("DYNAMODB_ENDPOINT"),
  jwtSecret: Config.option(Config.Redacted("HARMONY_JWT_SECRET")),
  accessTokenTtl: Config.Duration("ACCESS_TOKEN_TTL").pipe(Config.withDefault(Duration.minutes(15))),
  refreshTokenTtl: Config.Duration("REFRESH_TOKEN_TTL").pipe(Config.withDefault(Duration.days(30))),
  messagesTable: Config.String("DYNAMODB_TABLE").pipe(Config.withDefault("harmony_messages")),
  awsRegion: Config.String("AWS_REGION").pipe(Config.withDefault("us-east-1")),
  kafkaPartitions: Config.Int("KAFKA_PARTITIONS").pipe(Config.withDefault(8)),
  shutdownTimeout: Config.Duration("SHUTDOWN_TIMEOUT").pipe(Config.withDefault(Duration.seconds(20))),
  sendTimeout: Config.Duration("SEND_TIMEOUT").pipe(Config.withDefault(Duration.seconds(5))),
  kafkaSessionTimeout: Config.Duration("KAFKA_SESSION_TIMEOUT").pipe(Config.withDefault(Duration.seconds(10))),
  presenceTtl: Config.Duration("PRESENCE_TTL").pipe(Config.withDefault(Duration.seconds(30))),
  metricsPort: Config.option(Config.Port("METRICS_PORT")),
  searchTimeout: Config.Duration("SEARCH_TIMEOUT").pipe(Config.withDefault(defaultSearchLimits.timeout)),
  searchMaxMatches: Config.Int("SEARCH_MAX_MATCHES").pipe(Config.withDefault(defaultSearchLimits.maxMatches)),
  rateLimits: Config.all(
    Object.fromEntries(
      (Object.keys(defaultRateLimits) as Array<Limit>).map((limit) => [
        limit,
        bucket(rateLimitVariables[limit], defaultRateLimits[limit])
      ])
    ) as Record<Limit, Config.Config<TokenBucket>>
  ),
  frameLimits: Config.all({
    typing: bucket("RATE_LIMIT_TYPING", defaultFrameLimits.typing),
    subscribe: bucket("RATE_LIMIT_SUBSCRIBE", defaultFrameLimits.subscribe),
    read: bucket("RATE_LIMIT_READ", defaultFrameLimits.read),
    ping: bucket("RATE_LIMIT_PING", defaultFrameLimits.ping)
  }),
  maxSocketsPerUser: Config.Int("MAX_SOCKETS_PER_USER").pipe(
    Config.withDefault(defaultGatewayLimits.maxSocketsPerUser)
  ),
  maxSocketsPerAddress: Config.Int("MAX_SOCKETS_PER_ADDRESS").pipe(
    Config.withDefault(defaultGatewayLimits.maxSocketsPerAddress)
  ),
  maxSubscriptionsPerSocket: Config.Int("MAX_SUBSCRIPTIONS_PER_SOCKET").pipe(
    Config.withDefault(defaultGatewayLimits.maxSubscriptionsPerSocket)
  )
})

const frameLimitVariables: Record<keyof FrameLimits, string> = {
  typing: "RATE_LIMIT_TYPING",
  subscribe: "RATE_LIMIT_SUBSCRIBE",
  read: "RATE_LIMIT_READ",
  ping: "RATE_LIMIT_PING"
}

/** Reads and checks the configuration; every problem is one line naming its variable. */
export const load: Effect.Effect<HarmonyConfig, ConfigurationError> = Effect.gen(function* () {
  const c = yield* raw.pipe(Effect.mapError((error) => new ConfigurationError({ message: oneLine(error.message) })))
  const given = {
    DATABASE_URL: c.databaseUrl,
    KAFKA_BROKERS: c.kafkaBrokers,
    REDIS_URL: c.redisUrl,
    DYNAMODB_ENDPOINT: c.dynamodbEndpoint
  }
  const set = serviceVariables.filter((name) => Option.isSome(given[name]))
  const missing = serviceVariables.filter((name) => Option.isNone(given[name]))
  if (set.length > 0 && missing.length > 0) {
    return yield* new ConfigurationError({
      message: `cluster mode needs all of ${serviceVariables.join(", ")}: ${set.join(", ")} set but ${missing.join(", ")} missing (set none of them for embedded mode)`
    })
  }
  const sessionMillis = Duration.toMillis(c.kafkaSessionTimeout)
  if (sessionMillis < 6000 || sessionMillis > 300_000) {
    return yield* new ConfigurationError({
      message: "KAFKA_SESSION_TIMEOUT must be between 6 seconds and 5 minutes (the broker's group session limits)"
    })
  }
  if (c.kafkaPartitions < 1) {
    return yield* new ConfigurationError({ message: "KAFKA_PARTITIONS must be at least 1" })
  }
  // A bucket that cannot refill would turn its limit into an error on every request.
  const buckets: Array<[string, TokenBucket]> = [
    ...(Object.keys(c.rateLimits) as Array<Limit>).map((limit): [string, TokenBucket] => [
      rateLimitVariables[limit],
      c.rateLimits[limit]
    ]),
    ...(Object.keys(c.frameLimits) as Array<keyof FrameLimits>).map((frame): [string, TokenBucket] => [
      frameLimitVariables[frame],
      c.frameLimits[frame]
    ])
  ]
  for (const [variable, spec] of buckets) {
    const problem = bucketProblem(spec)
    if (problem !== undefined) return yield* new ConfigurationError({ message: `${variable} ${problem}` })
  }
  for (const [variable, value] of [
    ["MAX_SOCKETS_PER_USER", c.maxSocketsPerUser],
    ["MAX_SOCKETS_PER_ADDRESS", c.maxSocketsPerAddress],
    ["MAX_SUBSCRIPTIONS_PER_SOCKET", c.maxSubscriptionsPerSocket],
    ["SEARCH_MAX_MATCHES", c.searchMaxMatches]
  ] as const) {
    if (value < 1) return yield* new ConfigurationError({ message: `${variable} must be at least 1, got ${value}` })
  }
  if (Duration.toMillis(c.searchTimeout) < 1) {
    return yield* new ConfigurationError({ message: "SEARCH_TIMEOUT must be at least 1 millisecond" })
  }
  if (Option.isSome(c.jwtSecret) && secretLength(c.jwtSecret.value) < 32) {
    return yield* new ConfigurationError({ message: "HARMONY_JWT_SECRET must be at least 32 characters" })
  }
  let mode: Mode
  if (set.length === 0) {
    mode = { _tag: "Embedded", dataDir: c.dataDir }
  } else {
    if (Option.isNone(c.jwtSecret)) {
      return yield* new ConfigurationError({
        message: "HARMONY_JWT_SECRET is required in cluster mode (at least 32 characters, the same on every node)"
      })
    }
    const endpoint = Option.getOrThrow(c.dynamodbEndpoint)
    if (!URL.canParse(endpoint)) {
      return yield* new ConfigurationError({ message: `DYNAMODB_ENDPOINT is not a URL: ${endpoint}` })
    }
    const databaseUrl = Option.getOrThrow(c.databaseUrl)
    if (!/^postgres(ql)?:\/\//.test(databaseUrl)) {
      return yield* new ConfigurationError({ message: "DATABASE_URL must be a postgres:// URL" })
    }
    const redisUrl = Option.getOrThrow(c.redisUrl)
    if (!/^rediss?:\/\//.test(redisUrl)) {
      return yield* new ConfigurationError({ message: "REDIS_URL must be a redis:// or rediss:// URL" })
    }
    const brokers = Option.getOrThrow(c.kafkaBrokers)
      .split(",")
      .map((broker) => broker.trim())
      .filter((broker) => broker !== "")
    if (brokers.some((broker) => !/^[^:\s]+:\d+$/.test(broker))) {
      return yield* new ConfigurationError({ message: "KAFKA_BROKERS must be a comma-separated list of host:port" })
    }
    mode = {
      _tag: "Cluster",
      services: {
        databaseUrl: redacted(databaseUrl),
        kafkaBrokers: brokers,
        redisUrl: redacted(redisUrl),
        dynamodbEndpoint: endpoint
      }
    }
  }
  return {
    mode,
    port: c.port,
    host: c.host,
    dataDir: c.dataDir,
    jwtSecret: c.jwtSecret,
    accessTokenTtl: c.accessTokenTtl,
    refreshTokenTtl: c.refreshTokenTtl,
    messagesTable: c.messagesTable,
    awsRegion: c.awsRegion,
    kafkaPartitions: c.kafkaPartitions,
    shutdownTimeout: c.shutdownTimeout,
    sendTimeout: c.sendTimeout,
    rateLimits: c.rateLimits,
    frameLimits: c.frameLimits,
    gatewayLimits: {
      maxSocketsPerUser: c.maxSocketsPerUser,
      maxSocketsPerAddress: c.maxSocketsPerAddress,
      maxSubscriptionsPerSocket: c.maxSubscriptionsPerSocket
    },
    metricsPort: Option.getOrElse(c.metricsPort, () => c.port),
    kafkaSessionTimeout: c.kafkaSessionTimeout,
    presenceTtl: c.presenceTtl,
    searchLimits: { timeout: c.searchTimeout, maxMatches: c.searchMaxMatches }
  }
})

const redacted = (value: string) => Redacted.make(value)
const secretLength = (secret: Redacted.Redacted<string>) => Redacted.value(secret).length
const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ").trim()
