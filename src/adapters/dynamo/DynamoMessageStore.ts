/**
 * The MessageStore adapter on DynamoDB: the real service in cluster mode,
 * dynalite (Dynalite.ts) in embedded mode. Every AWS SDK import of the project
 * lives in this file.
 *
 * Table: pk `chatId` (S), sk `seq` (N), on-demand. Message items carry the
 * Message fields as plain attributes (strings, `seq` a number). Beside a
 * chat's messages, under keys of their own (outside the messages' key range):
 * - `<chatId>#changes`, seq: the changes on the log, `entry` their JSON;
 * - `<chatId>#state`, the target's seq: what the changes made of a message —
 *   `body`/`editedAt`/`editSeq` (the highest edit seq wins),
 *   `deletedAt`/`deleteSeq` (the lowest delete seq wins), and one attribute
 *   `r <emoji> <userId>` per reaction, 2 × its seq + 1 when present (+ 0
 *   when removed), so the highest seq wins. Every update is conditional on
 *   that, so applying changes again, or out of order, changes nothing;
 * - `<chatId>#epoch`, 0: the chat's epoch.
 * The state lives apart from the message item (which is only updated to take
 * a deleted message's text out), so a batch written again (a replay) cannot
 * undo a change.
 */
import {
  type AttributeValue,
  BatchWriteItemCommand,
  CreateTableCommand,
  DescribeTableCommand,
  DeleteItemCommand,
  DynamoDBClient,
  type DynamoDBClientConfig,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  UpdateItemCommand,
  type UpdateItemCommandInput,
  type QueryCommandInput,
  ScanCommand,
  type TableDescription,
  type WriteRequest
} from "@aws-sdk/client-dynamodb"
import { randomBytes } from "node:crypto"
import {
  Data,
  type Duration,
  Effect,
  Layer,
  Option,
  Predicate,
  Schedule,
  Schema,
  SchemaTransformation,
  Semaphore
} from "effect"
import {
  Change,
  ChatId,
  isChange,
  type LogEntry,
  Message,
  type ReactionCount,
  type UserId
} from "../../schema/Domain.ts"
import { mergeBySeq, MessageStore, MessageStoreError, type PageQuery } from "../../ports/MessageStore.ts"

export interface Options {
  /** Omitted: the SDK's default endpoint for `region` (AWS itself). */
  readonly endpoint?: string | undefined
  readonly region: string
  readonly table: string
  /** Omitted: the SDK's default credential chain (env, profile, instance role). */
  readonly credentials?:
    | {
        readonly accessKeyId: string
        readonly secretAccessKey: string
        readonly sessionToken?: string | undefined
      }
    | undefined
}

/** BatchWriteItem's hard limit on requests per call. */
const batchWriteMax = 25
/**
 * Batch writes in flight at once per store (per process), whatever the number
 * of partitions writing: enough to overlap round trips, and a store slower
 * than the load still answers each one within the request timeout — flooded
 * with every partition's writes at once, each would wait past it, fail and be
 * written again, and nothing would get through.
 */
export const writeConcurrency = 4
/** Keys fetched per deleteChat round: a handful of batch writes each. */
const deleteKeysPerRound = batchWriteMax * 10

/** A failed DynamoDB call, classified once so the retry policies can tell transient from permanent. */
class CallError extends Data.TaggedError("CallError")<{
  readonly message: string
  readonly retryable: boolean
  readonly cause?: unknown
}> {}

// Names and codes the SDK's own retry strategy treats as transient; the SDK's
// retries are off (maxAttempts 1) so that our schedules are the only ones.
const throttlingNames = new Set([
  "ProvisionedThroughputExceededException",
  "RequestLimitExceeded",
  "ThrottlingException",
  "Throttling",
  "LimitExceededException",
  "TooManyRequestsException"
])
const transientNames = new Set([
  "InternalServerError",
  "ServiceUnavailable",
  "TimeoutError",
  "RequestTimeout",
  "RequestTimeoutException"
])
const networkCodes = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN"
])

const isRetryable = (error: unknown, depth = 0): boolean => {
  if (!Predicate.isObject(error) || depth > 5) return false
  if (Predicate.hasProperty(error, "name") && error.name === "AbortError") return false
  if (Predicate.hasProperty(error, "name") && Predicate.isString(error.name)) {
    if (throttlingNames.has(error.name) || transientNames.has(error.name)) return true
  }
  if (Predicate.hasProperty(error, "code") && Predicate.isString(error.code) && networkCodes.has(error.code)) {
    return true
  }
  if (Predicate.hasProperty(error, "$retryable") && error.$retryable !== undefined) return true
  if (
    Predicate.hasProperty(error, "$metadata") &&
    Predicate.hasProperty(error.$metadata, "httpStatusCode") &&
    Predicate.isNumber(error.$metadata.httpStatusCode)
  ) {
    const status = error.$metadata.httpStatusCode
    if (status === 429 || status >= 500) return true
  }
  return Predicate.hasProperty(error, "cause") && isRetryable(error.cause, depth + 1)
}

const errorName = (error: unknown): string | undefined =>
  Predicate.hasProperty(error, "name") && Predicate.isString(error.name) ? error.name : undefined

const describeError = (error: unknown): string => {
  if (error instanceof Error) return `${error.name}: ${error.message}`
  return String(error)
}

/**
 * Capped exponential backoff with jitter, retrying only transient failures.
 * Both a count and an elapsed-time bound, so a dead endpoint fails in seconds.
 */
const backoff = (options: { readonly times: number; readonly duration: Duration.Input }) =>
  Schedule.min([Schedule.exponential("50 millis"), Schedule.spaced("2 seconds")]).pipe(
    Schedule.jittered,
    Schedule.upTo(options),
    Schedule.setInputType<CallError>(),
    Schedule.while(({ input }) => input.retryable)
  )

/** Writes can be throttled for a while under load (~7 s of backoff). */
const writeRetry = backoff({ times: 8, duration: "20 seconds" })
/** Reads serve requests: a short retry, then let the caller decide. */
const readRetry = backoff({ times: 3, duration: "5 seconds" })

type Item = Record<string, AttributeValue>

/** The item's attribute-value shape, decoded into a Message (with all of Message's checks). */
const MessageItemFields = Schema.Struct({
  chatId: Schema.Struct({ S: Schema.String }),
  seq: Schema.Struct({ N: Schema.String }),
  id: Schema.Struct({ S: Schema.String }),
  authorId: Schema.Struct({ S: Schema.String }),
  // Absent once the message is deleted (its text goes from the store too).
  body: Schema.optionalKey(Schema.Struct({ S: Schema.String })),
  clientMsgId: Schema.Struct({ S: Schema.String }),
  createdAt: Schema.Struct({ S: Schema.String })
})
const MessageItem = MessageItemFields.pipe(
  Schema.decodeTo(
    Message,
    SchemaTransformation.transform<typeof Message.Encoded, typeof MessageItemFields.Type>({
      decode: (item) => ({
        chatId: item.chatId.S,
        // A non-numeric N decodes to NaN, which Message's Int check rejects.
        seq: Number(item.seq.N),
        id: item.id.S,
        authorId: item.authorId.S,
        ...(item.body === undefined ? {} : { body: item.body.S }),
        clientMsgId: item.clientMsgId.S,
        createdAt: item.createdAt.S
      }),
      encode: (message) => toItem(message)
    })
  )
)

// Written by hand rather than through MessageItem's encoder: that encoder
// insists on Message instances, while any value of the Message type is a valid item.
const toItem = (message: typeof Message.Encoded) => ({
  chatId: { S: message.chatId },
  seq: { N: String(message.seq) },
  id: { S: message.id },
  authorId: { S: message.authorId },
  body: { S: message.body ?? "" },
  clientMsgId: { S: message.clientMsgId },
  createdAt: { S: message.createdAt }
})

const decodeItem = Schema.decodeUnknownEffect(MessageItem)

const changesKey = (chatId: string) => `${chatId}#changes`
const stateKey = (chatId: string) => `${chatId}#state`

const ChangeItem = Schema.Struct({ entry: Schema.Struct({ S: Schema.fromJsonString(Change) }) })
const decodeChangeItem = Schema.decodeUnknownEffect(ChangeItem)
const encodeChange = Schema.encodeSync(Schema.fromJsonString(Change))

const StateItem = Schema.Struct({
  seq: Schema.Struct({ N: Schema.String }),
  body: Schema.optionalKey(Schema.Struct({ S: Schema.String })),
  editedAt: Schema.optionalKey(Schema.Struct({ S: Schema.String })),
  deletedAt: Schema.optionalKey(Schema.Struct({ S: Schema.String }))
})
const decodeStateItem = Schema.decodeUnknownEffect(StateItem)

/** What the changes made of a message. */
interface MessageState {
  readonly body?: string | undefined
  readonly editedAt?: string | undefined
  readonly deletedAt?: string | undefined
  /** Present reactions: [emoji, userId, seq]. */
  readonly reactions: ReadonlyArray<readonly [string, string, number]>
}

const reactionPrefix = "r "
const reactionName = (emoji: string, userId: string) => `${reactionPrefix}${emoji} ${userId}`

/** A state item, decoded; its reaction attributes read by name (an emoji has no space). */
const decodeState = (item: Item) =>
  Effect.map(decodeStateItem(item), (decoded): readonly [number, MessageState] => {
    const reactions: Array<readonly [string, string, number]> = []
    for (const [name, value] of Object.entries(item)) {
      if (!name.startsWith(reactionPrefix) || value.N === undefined) continue
      const encoded = Number(value.N)
      if (!Number.isSafeInteger(encoded) || encoded % 2 !== 1) continue
      const rest = name.slice(reactionPrefix.length)
      const space = rest.indexOf(" ")
      if (space <= 0) continue
      reactions.push([rest.slice(0, space), rest.slice(space + 1), (encoded - 1) / 2])
    }
    return [
      Number(decoded.seq.N),
      {
        body: decoded.body?.S,
        editedAt: decoded.editedAt?.S,
        deletedAt: decoded.deletedAt?.S,
        reactions
      }
    ]
  })

/** A message as history shows it: its state applied, reactions counted for `viewer` (when given). */
const withState = (message: Message, state: MessageState | undefined, viewer: UserId | undefined): Message => {
  if (state === undefined) return message
  if (state.deletedAt !== undefined) {
    const { body: _body, ...rest } = message
    return new Message({ ...rest, deletedAt: state.deletedAt })
  }
  const counts: Array<ReactionCount> = []
  if (viewer !== undefined) {
    const byEmoji = new Map<string, { count: number; me: boolean; first: number }>()
    for (const [emoji, userId, seq] of state.reactions) {
      const known = byEmoji.get(emoji) ?? { count: 0, me: false, first: seq }
      byEmoji.set(emoji, {
        count: known.count + 1,
        me: known.me || userId === viewer,
        first: Math.min(known.first, seq)
      })
    }
    for (const [emoji, { count, me }] of [...byEmoji].sort((a, b) => a[1].first - b[1].first))
      counts.push({ emoji, count, me })
  }
  return new Message({
    ...message,
    ...(state.body === undefined ? {} : { body: state.body }),
    ...(state.editedAt === undefined ? {} : { editedAt: state.editedAt }),
    ...(counts.length === 0 ? {} : { reactions: counts })
  })
}

/** The conditional update that applies a change to its target's state item. */
const applyInput = (table: string, change: Change): UpdateItemCommandInput => {
  const Key = { chatId: { S: stateKey(change.chatId) }, seq: { N: String(change.targetSeq) } }
  const seq = { N: String(change.seq) }
  switch (change.type) {
    case "message_edited":
      return {
        TableName: table,
        Key,
        UpdateExpression: "SET body = :body, editedAt = :at, editSeq = :seq",
        ConditionExpression: "attribute_not_exists(deletedAt) AND (attribute_not_exists(editSeq) OR editSeq < :seq)",
        ExpressionAttributeValues: { ":body": { S: change.body }, ":at": { S: change.editedAt }, ":seq": seq }
      }
    case "message_deleted":
      return {
        TableName: table,
        Key,
        UpdateExpression: "SET deletedAt = :at, deleteSeq = :seq REMOVE body, editedAt",
        ConditionExpression: "attribute_not_exists(deleteSeq) OR deleteSeq > :seq",
        ExpressionAttributeValues: { ":at": { S: change.deletedAt }, ":seq": seq }
      }
    case "reaction":
      return {
        TableName: table,
        Key,
        UpdateExpression: "SET #r = :v",
        ConditionExpression: "attribute_not_exists(#r) OR #r < :v",
        ExpressionAttributeNames: { "#r": reactionName(change.emoji, change.userId) },
        ExpressionAttributeValues: { ":v": { N: String(change.seq * 2 + (change.added ? 1 : 0)) } }
      }
  }
}

const chunk = <A>(items: ReadonlyArray<A>, size: number): Array<Array<A>> => {
  const chunks: Array<Array<A>> = []
  for (let i = 0; i < items.length; i += size) chunks.push(items.slice(i, i + size))
  return chunks
}

const clientConfig = (options: Options): DynamoDBClientConfig => ({
  region: options.region,
  ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
  ...(options.credentials === undefined
    ? {}
    : {
        credentials: {
          accessKeyId: options.credentials.accessKeyId,
          secretAccessKey: options.credentials.secretAccessKey,
          ...(options.credentials.sessionToken === undefined ? {} : { sessionToken: options.credentials.sessionToken })
        }
      }),
  // Retries belong to the schedules above; SDK retries would multiply with them.
  maxAttempts: 1,
  requestHandler: {
    // A down or unreachable endpoint must fail in seconds; the SDK default is to wait forever.
    connectionTimeout: 2_000,
    requestTimeout: 10_000,
    throwOnRequestTimeout: true
  }
})

/**
 * The adapter. Building it creates the table when missing and waits until it
 * is ACTIVE; the client is destroyed when the layer is released.
 */
export const layer = (options: Options): Layer.Layer<MessageStore, MessageStoreError> =>
  Layer.effect(
    MessageStore,
    Effect.gen(function* () {
      const table = options.table
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => new DynamoDBClient(clientConfig(options))),
        (client) => Effect.sync(() => client.destroy())
      )

      const call = <A>(operation: string, send: (signal: AbortSignal) => Promise<A>): Effect.Effect<A, CallError> =>
        Effect.tryPromise({
          try: (signal) => send(signal),
          catch: (cause) =>
            new CallError({
              message: `${operation} on ${table}: ${describeError(cause)}`,
              retryable: isRetryable(cause),
              cause
            })
        })

      const toStoreError = (operation: string) => (error: CallError | Schema.SchemaError) =>
        new MessageStoreError({
          message: `${operation}: ${error.message}`,
          cause: error._tag === "CallError" ? error.cause : error
        })

      const describeTable = call("DescribeTable", (abortSignal) =>
        client.send(new DescribeTableCommand({ TableName: table }), { abortSignal })
      ).pipe(Effect.map((output) => output.Table))

      // Tables created concurrently by another node are fine: it is the same definition.
      const createTable = call("CreateTable", (abortSignal) =>
        client.send(
          new CreateTableCommand({
            TableName: table,
            AttributeDefinitions: [
              { AttributeName: "chatId", AttributeType: "S" },
              { AttributeName: "seq", AttributeType: "N" }
            ],
            KeySchema: [
              { AttributeName: "chatId", KeyType: "HASH" },
              { AttributeName: "seq", KeyType: "RANGE" }
            ],
            BillingMode: "PAY_PER_REQUEST"
          }),
          { abortSignal }
        )
      ).pipe(
        Effect.asVoid,
        Effect.catchIf(
          (error) => errorName(error.cause) === "ResourceInUseException",
          () => Effect.logDebug(`DynamoDB table ${table} is being created by another node`)
        )
      )

      const checkKeySchema = (description: TableDescription) => {
        const keys = (description.KeySchema ?? []).map((key) => `${key.AttributeName}:${key.KeyType}`).join(",")
        return keys === "chatId:HASH,seq:RANGE"
          ? Effect.void
          : Effect.fail(
              new CallError({
                message: `table ${table} exists with key schema ${keys}, expected chatId:HASH,seq:RANGE`,
                retryable: false
              })
            )
      }

      // Real DynamoDB takes seconds to minutes to activate a new table, and may
      // briefly answer ResourceNotFound for a table it has just accepted.
      const awaitActive = describeTable.pipe(
        Effect.mapError((error) =>
          errorName(error.cause) === "ResourceNotFoundException"
            ? new CallError({ message: error.message, retryable: true, cause: error.cause })
            : error
        ),
        Effect.flatMap((description) =>
          description?.TableStatus === "ACTIVE"
            ? Effect.succeed(description)
            : Effect.fail(
                new CallError({
                  message: `table ${table} is ${description?.TableStatus ?? "missing"}`,
                  retryable: true
                })
              )
        ),
        Effect.retry(
          Schedule.spaced("250 millis").pipe(
            Schedule.upTo({ duration: "3 minutes" }),
            Schedule.setInputType<CallError>(),
            Schedule.while(({ input }) => input.retryable)
          )
        )
      )

      yield* describeTable.pipe(
        Effect.retry(readRetry),
        Effect.asVoid,
        Effect.catchIf(
          (error) => errorName(error.cause) === "ResourceNotFoundException",
          () => createTable.pipe(Effect.retry(readRetry))
        ),
        Effect.andThen(awaitActive),
        Effect.flatMap(checkKeySchema),
        Effect.mapError(toStoreError(`preparing DynamoDB table ${table}`))
      )

      const writePermits = yield* Semaphore.make(writeConcurrency)

      /** One BatchWriteItem of at most 25 requests, resent until nothing is left unprocessed. */
      const batchWrite = (requests: ReadonlyArray<WriteRequest>) => {
        let pending = requests
        return Effect.suspend(() =>
          call("BatchWriteItem", (abortSignal) =>
            client.send(new BatchWriteItemCommand({ RequestItems: { [table]: [...pending] } }), { abortSignal })
          )
        ).pipe(
          // A permit per attempt, not across a retry's backoff.
          Semaphore.withPermits(writePermits, 1),
          Effect.flatMap((output) => {
            const unprocessed = output.UnprocessedItems?.[table] ?? []
            if (unprocessed.length === 0) return Effect.void
            pending = unprocessed
            return Effect.fail(
              new CallError({
                message: `BatchWriteItem on ${table}: ${unprocessed.length} of ${requests.length} items unprocessed`,
                retryable: true
              })
            )
          }),
          Effect.retry(writeRetry)
        )
      }

      const writeAll = (requests: ReadonlyArray<WriteRequest>) =>
        Effect.forEach(chunk(requests, batchWriteMax), batchWrite, { concurrency: writeConcurrency, discard: true })

      /** Applies a change to its target's state; a change that lost (see the header) changes nothing. */
      /** One conditional update; a condition that does not hold means there is nothing to do. */
      const update = (input: UpdateItemCommandInput) =>
        call("UpdateItem", (abortSignal) => client.send(new UpdateItemCommand(input), { abortSignal })).pipe(
          Semaphore.withPermits(writePermits, 1),
          Effect.retry(writeRetry),
          Effect.asVoid,
          Effect.catchIf(
            (error) => errorName(error.cause) === "ConditionalCheckFailedException",
            () => Effect.void
          )
        )

      /**
       * Applies a change to its target's state; a change that lost (see the
       * header) changes nothing. A deletion then takes the text out of the
       * message item as well (history hides it by the state already, should
       * a replay write the item again).
       */
      const apply = (change: Change) =>
        update(applyInput(table, change)).pipe(
          Effect.andThen(
            change.type !== "message_deleted"
              ? Effect.void
              : update({
                  TableName: table,
                  Key: { chatId: { S: change.chatId }, seq: { N: String(change.targetSeq) } },
                  UpdateExpression: "REMOVE body",
                  ConditionExpression: "attribute_exists(seq)"
                })
          )
        )

      const putBatch = Effect.fn("MessageStore.putBatch")(function* (entries: ReadonlyArray<LogEntry>) {
        // One BatchWriteItem rejects duplicate keys outright, and the last write
        // of a key is the one that would have won anyway.
        const byKey = new Map<string, LogEntry>()
        for (const entry of entries) byKey.set(`${entry.chatId}\u0000${entry.seq}`, entry)
        const changes: Array<Change> = []
        const puts: Array<WriteRequest> = []
        for (const entry of byKey.values()) {
          if (!isChange(entry)) {
            puts.push({ PutRequest: { Item: toItem(entry) } })
            continue
          }
          changes.push(entry)
          puts.push({
            PutRequest: {
              Item: {
                chatId: { S: changesKey(entry.chatId) },
                seq: { N: String(entry.seq) },
                entry: { S: encodeChange(entry) }
              }
            }
          })
        }
        // Applied before any entry is written: a change the store holds has been applied.
        yield* Effect.forEach(changes, apply, { concurrency: writeConcurrency, discard: true }).pipe(
          Effect.andThen(writeAll(puts)),
          Effect.mapError(toStoreError(`writing ${entries.length} entries`))
        )
      })

      /** Queries until `limit` items or the end of the key range: one Query page stops at 1 MB. */
      const queryRaw = (input: QueryCommandInput, limit: number) =>
        Effect.gen(function* () {
          const items: Array<Item> = []
          let startKey: Item | undefined
          do {
            const output = yield* call("Query", (abortSignal) =>
              client.send(
                new QueryCommand({
                  ...input,
                  Limit: limit - items.length,
                  ...(startKey === undefined ? {} : { ExclusiveStartKey: startKey })
                }),
                { abortSignal }
              )
            ).pipe(Effect.retry(readRetry))
            items.push(...(output.Items ?? []))
            startKey = output.LastEvaluatedKey
          } while (startKey !== undefined && items.length < limit)
          return items
        })

      /** The state items of a chat's messages with seq in [low, high], by seq. */
      const statesBetween = (chatId: ChatId, low: number, high: number) =>
        queryRaw(
          {
            TableName: table,
            KeyConditionExpression: "#chatId = :chatId AND #seq BETWEEN :low AND :high",
            ExpressionAttributeNames: { "#chatId": "chatId", "#seq": "seq" },
            ExpressionAttributeValues: {
              ":chatId": { S: stateKey(chatId) },
              ":low": { N: String(low) },
              ":high": { N: String(high) }
            },
            ConsistentRead: true
          },
          // At most one state per message in the range, and a range spans at most a page.
          high - low + 1
        ).pipe(
          Effect.flatMap((items) => Effect.forEach(items, decodeState)),
          Effect.map((states) => new Map(states))
        )

      /** A chat's messages (as history shows them) from a query of its message items. */
      const queryChat = (
        chatId: ChatId,
        range: { readonly op: "<" | ">"; readonly bound: number } | undefined,
        newestFirst: boolean,
        limit: number,
        viewer?: UserId | undefined
      ) =>
        Effect.gen(function* () {
          const items = yield* queryItems(chatId, range, newestFirst, limit)
          const messages = yield* Effect.forEach(items, (item) => decodeItem(item))
          if (messages.length === 0) return messages
          const seqs = messages.map((m) => m.seq)
          const states = yield* statesBetween(chatId, Math.min(...seqs), Math.max(...seqs))
          return states.size === 0 ? messages : messages.map((m) => withState(m, states.get(m.seq), viewer))
        })

      const queryChanges = (
        chatId: ChatId,
        range: { readonly op: "<" | ">"; readonly bound: number } | undefined,
        newestFirst: boolean,
        limit: number
      ) =>
        queryItems(changesKey(chatId), range, newestFirst, limit).pipe(
          Effect.flatMap((items) => Effect.forEach(items, (item) => decodeChangeItem(item))),
          Effect.map((items) => items.map((item) => item.entry.S))
        )

      const validLimit = (limit: number) =>
        Number.isInteger(limit) && limit >= 0
          ? Effect.succeed(limit)
          : Effect.fail(new MessageStoreError({ message: `limit must be a non-negative integer, got ${limit}` }))

      const queryItems = (
        pk: string,
        range: { readonly op: "<" | ">"; readonly bound: number } | undefined,
        newestFirst: boolean,
        limit: number
      ) =>
        limit === 0
          ? Effect.succeed([])
          : queryRaw(
              {
                TableName: table,
                ...(range === undefined
                  ? {
                      KeyConditionExpression: "#chatId = :chatId",
                      ExpressionAttributeNames: { "#chatId": "chatId" },
                      ExpressionAttributeValues: { ":chatId": { S: pk } }
                    }
                  : {
                      KeyConditionExpression: `#chatId = :chatId AND #seq ${range.op} :bound`,
                      ExpressionAttributeNames: { "#chatId": "chatId", "#seq": "seq" },
                      ExpressionAttributeValues: { ":chatId": { S: pk }, ":bound": { N: String(range.bound) } }
                    }),
                ScanIndexForward: !newestFirst,
                // Activation reads the latest seq to continue the sequence: a stale read would reuse seqs.
                ConsistentRead: true
              },
              limit
            )

      const page = Effect.fn("MessageStore.page")(function* (chatId: ChatId, query: PageQuery) {
        const limit = yield* validLimit(query.limit)
        return yield* (
          query.before !== undefined
            ? queryChat(chatId, { op: "<", bound: query.before }, true, limit, query.viewer)
            : queryChat(chatId, { op: ">", bound: query.after ?? 0 }, false, limit, query.viewer)
        ).pipe(Effect.mapError(toStoreError(`reading a page of chat ${chatId}`)))
      })

      const entries = Effect.fn("MessageStore.entries")(function* (chatId: ChatId, after: number, limit: number) {
        yield* validLimit(limit)
        const range = { op: ">", bound: after } as const
        const [messages, changes] = yield* Effect.all(
          [queryChat(chatId, range, false, limit), queryChanges(chatId, range, false, limit)],
          { concurrency: 2 }
        ).pipe(Effect.mapError(toStoreError(`reading the log of chat ${chatId}`)))
        return mergeBySeq(messages, changes, false, limit)
      })

      const latest = Effect.fn("MessageStore.latest")(function* (chatId: ChatId, limit: number) {
        yield* validLimit(limit)
        const [messages, changes] = yield* Effect.all(
          [queryChat(chatId, undefined, true, limit), queryChanges(chatId, undefined, true, limit)],
          { concurrency: 2 }
        ).pipe(Effect.mapError(toStoreError(`reading the latest entries of chat ${chatId}`)))
        return mergeBySeq(messages, changes, true, limit)
      })

      const message = Effect.fn("MessageStore.message")(function* (chatId: ChatId, seq: number) {
        const found = yield* queryChat(chatId, { op: ">", bound: seq - 1 }, false, 1).pipe(
          Effect.mapError(toStoreError(`reading message ${seq} of chat ${chatId}`))
        )
        const first = found[0]
        return first !== undefined && first.seq === seq ? Option.some(first) : Option.none()
      })

      // The epoch lives under a key of its own, next to the chat's messages
      // but outside their key range, so no message query ever meets it.
      const epochKey = (chatId: ChatId) => ({ chatId: { S: `${chatId}#epoch` }, seq: { N: "0" } })
      const readEpoch = (chatId: ChatId) =>
        call("GetItem", (abortSignal) =>
          client.send(new GetItemCommand({ TableName: table, Key: epochKey(chatId), ConsistentRead: true }), {
            abortSignal
          })
        ).pipe(
          Effect.retry(readRetry),
          Effect.map((output) => output.Item?.epoch?.S)
        )
      // Created with the chat's history: a store that lost the history lost this item too, so the chat gets a new one.
      const epoch = Effect.fn("MessageStore.epoch")(
        function* (chatId: ChatId) {
          const known = yield* readEpoch(chatId)
          if (known !== undefined) return known
          const fresh = randomBytes(6).toString("base64url")
          const created = yield* call("PutItem", (abortSignal) =>
            client.send(
              new PutItemCommand({
                TableName: table,
                Item: { ...epochKey(chatId), epoch: { S: fresh } },
                ConditionExpression: "attribute_not_exists(chatId)"
              }),
              { abortSignal }
            )
          ).pipe(
            Effect.retry(writeRetry),
            Effect.as(true),
            Effect.catchIf(
              (error) =>
                Predicate.hasProperty(error.cause, "name") && error.cause.name === "ConditionalCheckFailedException",
              () => Effect.succeed(false)
            )
          )
          if (created) return fresh
          // Another caller created it first: theirs it is.
          const theirs = yield* readEpoch(chatId)
          if (theirs !== undefined) return theirs
          return yield* new CallError({
            message: `the epoch of chat ${chatId} vanished while being read`,
            retryable: false
          })
        },
        (effect, chatId) => Effect.mapError(effect, toStoreError(`reading the epoch of chat ${chatId}`))
      )

      // Re-queries after every round, so a repeat after a partial failure picks up what is left.
      const deleteChat = Effect.fn("MessageStore.deleteChat")(function* (chatId: ChatId) {
        const deleteRound = (pk: string) =>
          call("Query", (abortSignal) =>
            client.send(
              new QueryCommand({
                TableName: table,
                KeyConditionExpression: "#chatId = :chatId",
                ExpressionAttributeNames: { "#chatId": "chatId", "#seq": "seq" },
                ExpressionAttributeValues: { ":chatId": { S: pk } },
                ProjectionExpression: "#chatId, #seq",
                ConsistentRead: true,
                Limit: deleteKeysPerRound
              }),
              { abortSignal }
            )
          ).pipe(
            Effect.retry(readRetry),
            Effect.flatMap((output) => {
              const keys = output.Items ?? []
              return writeAll(keys.map((key) => ({ DeleteRequest: { Key: key } }))).pipe(Effect.as(keys.length))
            })
          )
        yield* Effect.forEach(
          [chatId, changesKey(chatId), stateKey(chatId)],
          (pk) => deleteRound(pk).pipe(Effect.repeat({ until: (deleted) => deleted === 0 })),
          { discard: true }
        ).pipe(
          // Last: the history is gone, so is its epoch (a chat id is never reused anyway).
          Effect.andThen(
            call("DeleteItem", (abortSignal) =>
              client.send(new DeleteItemCommand({ TableName: table, Key: epochKey(chatId) }), { abortSignal })
            ).pipe(Effect.retry(writeRetry))
          ),
          Effect.mapError(toStoreError(`deleting chat ${chatId}`))
        )
      })

      // No retry: readiness probes repeat on their own, and should see an outage at once.
      const ping = describeTable.pipe(
        Effect.flatMap((description) =>
          description?.TableStatus === "ACTIVE"
            ? Effect.void
            : Effect.fail(
                new CallError({
                  message: `table ${table} is ${description?.TableStatus ?? "missing"}`,
                  retryable: false
                })
              )
        ),
        Effect.mapError(toStoreError("pinging DynamoDB")),
        Effect.withSpan("MessageStore.ping")
      )

      return MessageStore.of({ putBatch, page, entries, latest, message, epoch, deleteChat, ping })
    })
  )

/** One page of a whole-table scan: its messages, and the epochs it met. */
export interface TablePage {
  readonly messages: ReadonlyArray<Message>
  readonly epochs: ReadonlyArray<readonly [ChatId, string]>
}

const EpochItem = Schema.Struct({
  chatId: Schema.Struct({ S: Schema.String.check(Schema.isEndingWith("#epoch")) }),
  seq: Schema.Struct({ N: Schema.Literal("0") }),
  epoch: Schema.Struct({ S: Schema.String })
})
const decodeEpochItem = Schema.decodeUnknownEffect(EpochItem)

/**
 * Hands every item of the table to `onPage`, a page (at most 1 MB) at a
 * time, decoded: how embedded mode moves its old dynalite data into its
 * SQLite store (DynaliteImport.ts). Changes and their state are skipped
 * (no earlier version wrote any); any other item that is neither a message
 * nor an epoch fails the scan rather than being left behind.
 */
export const scanTable = <E, R>(
  options: Options,
  onPage: (page: TablePage) => Effect.Effect<void, E, R>
): Effect.Effect<void, MessageStoreError | E, R> =>
  Effect.gen(function* () {
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => new DynamoDBClient(clientConfig(options))),
      (client) => Effect.sync(() => client.destroy())
    )
    const malformed = (error: Schema.SchemaError) =>
      new MessageStoreError({
        message: `Scan on ${options.table}: an item is malformed: ${error.message}`,
        cause: error
      })
    let startKey: Item | undefined
    do {
      const output = yield* Effect.tryPromise({
        try: (abortSignal) =>
          client.send(
            new ScanCommand({ TableName: options.table, ConsistentRead: true, ExclusiveStartKey: startKey }),
            {
              abortSignal
            }
          ),
        catch: (cause) => new MessageStoreError({ message: `Scan on ${options.table}: ${describeError(cause)}`, cause })
      }).pipe(
        // No table, no items.
        Effect.catchIf(
          (error) => errorName(error.cause) === "ResourceNotFoundException",
          () => Effect.succeed({ Items: [], LastEvaluatedKey: undefined })
        )
      )
      const messages: Array<Message> = []
      const epochs: Array<readonly [ChatId, string]> = []
      for (const item of output.Items ?? []) {
        const pk = item.chatId?.S
        // Changes and their state: no earlier version wrote them, so the import has none to carry.
        if (pk?.endsWith("#changes") === true || pk?.endsWith("#state") === true) continue
        if (pk?.endsWith("#epoch") === true) {
          const decoded = yield* decodeEpochItem(item).pipe(Effect.mapError(malformed))
          epochs.push([ChatId.make(decoded.chatId.S.slice(0, -"#epoch".length)), decoded.epoch.S])
        } else {
          messages.push(yield* decodeItem(item).pipe(Effect.mapError(malformed)))
        }
      }
      yield* onPage({ messages, epochs })
      startKey = output.LastEvaluatedKey
    } while (startKey !== undefined)
  }).pipe(Effect.scoped)
