/**
 * A whole message path in one process, for the pipeline properties: one
 * in-process log (MemoryEventLog) that several "actors nodes" consume as the
 * group "actors" (each node is the real `Actors.layer` with its own
 * LocalActors), one shared MessageStore (DynamoMessageStore on dynalite, seen
 * through a fault-injecting decorator), one PubSub with the real Fanout on
 * top, and the migrated SQL state for `chats.last_seq`.
 *
 * A scenario is produced to `chat.messages` step by step, interleaved with
 * faults: nodes joining (rebalance), leaving gracefully (drain, final commit),
 * and crashing — every claim handler of the node is interrupted at once, with
 * no drain and no final commit, before the node leaves the group. (Closing a
 * MemoryEventLog consumer's scope is always graceful, whatever its exit: its
 * leave finalizer drains every claim first. So a crash interrupts the
 * handlers themselves; the group then redelivers everything uncommitted.)
 *
 * After the scenario the harness lets the system settle (with a deadline) and
 * reports every violated invariant, with a journal of what happened.
 */
import { Arbitrary, Context, Duration, Effect, Exit, Fiber, Layer, Logger, References, Scope, Stream } from "effect"
import type { Arbitrary as ArbitraryT } from "effect/Arbitrary"
import { SqlClient } from "effect/sql"
import * as Actors from "../../src/actors/Actors.ts"
import { LocalActors } from "../../src/actors/ActorRegistry.ts"
import * as Dynalite from "../../src/infra/Dynalite.ts"
import { EventLog, type PartitionClaim } from "../../src/infra/EventLog.ts"
import * as Memory from "../../src/infra/Memory.ts"
import * as MemoryEventLog from "../../src/infra/MemoryEventLog.ts"
import { MessageStore, MessageStoreError } from "../../src/infra/MessageStore.ts"
import { migrate } from "../../src/infra/migrations.ts"
import * as Sql from "../../src/infra/Sql.ts"
import type { ChatId, Message } from "../../src/schema/Domain.ts"
import { encodeSendRecord, type SendRecord } from "../../src/schema/Records.ts"
import { Fanout } from "../../src/streams/Fanout.ts"
import type { RunnerOptions } from "../../src/streams/PartitionRunner.ts"
import { MessagesTopic } from "../../src/streams/Topics.ts"
import { buildRecords, chatIdOf, firstOccurrences, int, type SendOp, sendOp } from "./generators.ts"

// --- shared infrastructure ----------------------------------------------------

/** dynalite (in memory) and PGlite, migrated: built once per file; runs use fresh chat ids. */
export const infraLayer = Layer.mergeAll(
  Dynalite.embeddedLayer({ table: `property-${Date.now().toString(36)}` }),
  Sql.embedded({}).pipe(Layer.tap((context) => Effect.provideContext(migrate, context)))
)

// --- scenarios ----------------------------------------------------------------

export type Step =
  | { readonly _tag: "Send"; readonly op: SendOp }
  | { readonly _tag: "Pause"; readonly millis: number }
  | { readonly _tag: "Start" }
  | { readonly _tag: "Stop"; readonly pick: number }
  | { readonly _tag: "Crash"; readonly pick: number }

export type StoreFault =
  | { readonly _tag: "Ok" }
  /** Fails before writing anything. */
  | { readonly _tag: "Fail" }
  /** Writes the first `keep` messages of the batch, then fails (a crash mid-batch). */
  | { readonly _tag: "Prefix"; readonly keep: number }
  /** Writes the messages whose bit is set in `mask` (cyclically), then fails: unprocessed items, orphans above a gap. */
  | { readonly _tag: "Subset"; readonly mask: number }
  /** Waits, then writes. */
  | { readonly _tag: "Slow"; readonly millis: number }
  /** Writes, then waits before answering: the window between durable and completed. */
  | { readonly _tag: "SlowAfter"; readonly millis: number }

export interface Scenario {
  readonly partitions: number
  readonly steps: ReadonlyArray<Step>
  /** The fate of the store's n-th putBatch call; calls past the end succeed. */
  readonly faults: ReadonlyArray<StoreFault>
  readonly mailboxSize: number
  readonly backlog: number
  readonly batchSize: number
  readonly commitMillis: number
  readonly idleMillis: number
  readonly ringSize: number
}

export const chatsPerRun = 4
export const authorsPerRun = 3

/** Step kinds by weight; 0 (a send) is where shrinking heads. */
const step: ArbitraryT<Step> = Arbitrary.map(
  Arbitrary.all({ kind: int(0, 19), op: sendOp(chatsPerRun, authorsPerRun), n: int(0, 40) }),
  ({ kind, op, n }): Step =>
    kind <= 11
      ? { _tag: "Send", op }
      : kind <= 13
        ? { _tag: "Pause", millis: n }
        : kind <= 15
          ? { _tag: "Start" }
          : kind <= 16
            ? { _tag: "Stop", pick: n }
            : { _tag: "Crash", pick: n }
)

const fault: ArbitraryT<StoreFault> = Arbitrary.map(
  Arbitrary.all({ kind: int(0, 9), n: int(0, 255) }),
  ({ kind, n }): StoreFault =>
    kind <= 3
      ? { _tag: "Ok" }
      : kind === 4
        ? { _tag: "Fail" }
        : kind === 5
          ? { _tag: "Prefix", keep: n % 8 }
          : kind === 6
            ? { _tag: "Subset", mask: n }
            : kind === 7
              ? { _tag: "Slow", millis: n % 30 }
              : { _tag: "SlowAfter", millis: n % 30 }
)

const failing = (f: StoreFault) => f._tag === "Fail" || f._tag === "Prefix" || f._tag === "Subset"

/**
 * Whole scenarios. At most two failing store calls in a row, so the sink's
 * retries (exponential from 100 ms) stay short; small mailboxes, backlogs and
 * batches, frequent commits and short idle timeouts (actors passivate and
 * reactivate mid-stream), so faults land in interesting places.
 */
export const scenario: ArbitraryT<Scenario> = Arbitrary.map(
  Arbitrary.all({
    partitions: int(1, 3),
    steps: Arbitrary.array(step, { maxLength: 70 }),
    faults: Arbitrary.array(fault, { maxLength: 24 }),
    mailboxSize: int(1, 4),
    backlog: int(1, 8),
    batchSize: int(1, 6),
    commitMillis: int(2, 40),
    idleMillis: int(5, 100),
    ringSize: int(1, 8)
  }),
  (s) => ({
    ...s,
    faults: s.faults.map((f, i, all) =>
      failing(f) && i >= 2 && failing(all[i - 1]!) && failing(all[i - 2]!) ? { _tag: "Ok" as const } : f
    )
  })
)

export const runnerOptions = (s: Scenario): RunnerOptions => ({
  actors: {
    mailboxSize: s.mailboxSize,
    idleTimeout: Duration.millis(s.idleMillis),
    // Large enough that every retry and every replay stays inside the window
    // (the window's own promise is the Sequencer property's business).
    dedupeWindow: 1000,
    ringSize: s.ringSize,
    restoreWindow: 1000 + s.batchSize
  },
  backlog: s.backlog,
  batchSize: s.batchSize,
  commitInterval: Duration.millis(s.commitMillis)
})

// --- the journal ----------------------------------------------------------------

class Journal {
  private readonly started = Date.now()
  readonly lines: Array<string> = []
  add(line: string) {
    this.lines.push(`${String(Date.now() - this.started).padStart(5)}ms ${line}`)
  }
  tail(count = 120) {
    const shown = this.lines.slice(-count)
    const skipped = this.lines.length - shown.length
    return [...(skipped > 0 ? [`... ${skipped} earlier lines`] : []), ...shown].join("\n")
  }
}

const describeBatch = (messages: ReadonlyArray<Message>) => {
  const byChat = new Map<string, Array<number>>()
  for (const m of messages) byChat.set(m.chatId, [...(byChat.get(m.chatId) ?? []), m.seq])
  return [...byChat].map(([chat, seqs]) => `${chat.slice(chat.lastIndexOf("-") + 1)}:${seqs.join(",")}`).join(" ")
}

interface Counters {
  activations: number
  faults: number
  crashes: number
  starts: number
  stops: number
}

// --- the fault-injecting store ------------------------------------------------------

/** Delegates to the real adapter; the n-th putBatch call meets faults[n]. */
const faultyStore = (
  real: MessageStore["Service"],
  faults: ReadonlyArray<StoreFault>,
  journal: Journal,
  counters: Counters
): MessageStore["Service"] => {
  let calls = 0
  const injected = (what: string) => new MessageStoreError({ message: `injected fault: ${what}` })
  return MessageStore.of({
    ...real,
    latest: (chatId, limit) =>
      Effect.suspend(() => {
        counters.activations++
        journal.add(`store: latest ${chatId.slice(chatId.lastIndexOf("-") + 1)} (an actor activates)`)
        return real.latest(chatId, limit)
      }),
    putBatch: (messages) =>
      Effect.suspend(() => {
        const call = calls++
        const f = faults[call] ?? { _tag: "Ok" }
        if (f._tag !== "Ok") counters.faults++
        journal.add(`store: putBatch #${call} [${describeBatch(messages)}] ${f._tag}`)
        switch (f._tag) {
          case "Ok":
            return real.putBatch(messages)
          case "Fail":
            return Effect.fail(injected("nothing written"))
          case "Prefix": {
            const written = messages.slice(0, f.keep % (messages.length + 1))
            return real.putBatch(written).pipe(Effect.andThen(Effect.fail(injected(`wrote ${written.length} first`))))
          }
          case "Subset": {
            const written = messages.filter((_, i) => (f.mask >> (i % 8)) & 1)
            return real
              .putBatch(written)
              .pipe(Effect.andThen(Effect.fail(injected(`wrote only [${describeBatch(written)}]`))))
          }
          case "Slow":
            return Effect.sleep(`${f.millis} millis`).pipe(Effect.andThen(real.putBatch(messages)))
          case "SlowAfter":
            return real.putBatch(messages).pipe(Effect.andThen(Effect.sleep(`${f.millis} millis`)))
        }
      })
  })
}

// --- nodes --------------------------------------------------------------------------

type NodeState = "starting" | "live" | "stopping" | "stopped" | "crashed"

interface Node {
  readonly id: number
  readonly scope: Scope.Closeable
  readonly handlers: Set<Fiber.Fiber<void>>
  state: NodeState
}

interface Commit {
  readonly offset: number
  readonly node: number
}

interface ClusterOptions {
  readonly log: EventLog["Service"]
  readonly fanout: Fanout["Service"]
  readonly store: MessageStore["Service"]
  readonly sql: SqlClient.SqlClient
  readonly partitions: number
  readonly runner: RunnerOptions
  readonly journal: Journal
}

const makeCluster = Effect.fnUntraced(function* (options: ClusterOptions) {
  const { journal } = options
  const nodes: Array<Node> = []
  /** Node starts and stops in progress (stops wait for drains). */
  const pending = new Set<Fiber.Fiber<void>>()
  /** Every successful commit, per partition, in the order they happened. */
  const commits = new Map<number, Array<Commit>>()
  const runScope = yield* Effect.scope

  const track = (effect: Effect.Effect<void>) =>
    Effect.gen(function* () {
      const fiber = yield* Effect.forkIn(effect, runScope)
      pending.add(fiber)
      fiber.addObserver(() => pending.delete(fiber))
    })

  /** The log as one node sees it: claims run as tracked fibers a crash can interrupt, commits are recorded. */
  const nodeLog = (node: Node): EventLog["Service"] =>
    EventLog.of({
      ...options.log,
      consume: (consume) =>
        options.log.consume({
          ...consume,
          onClaim: (claim) =>
            Effect.suspend(() => {
              // A crashed node never runs a handler again (the log restarts failed handlers until the node leaves).
              if (node.state === "crashed") return Effect.void
              journal.add(`node ${node.id}: claims partition ${claim.partition}`)
              const recorded: PartitionClaim = {
                ...claim,
                commit: (offset) =>
                  claim.commit(offset).pipe(
                    Effect.tap(() =>
                      Effect.sync(() => {
                        const list = commits.get(claim.partition) ?? []
                        list.push({ offset, node: node.id })
                        commits.set(claim.partition, list)
                        journal.add(`node ${node.id}: committed partition ${claim.partition} at ${offset}`)
                      })
                    )
                  )
              }
              return Effect.gen(function* () {
                const fiber = yield* Effect.forkChild(consume.onClaim(recorded))
                node.handlers.add(fiber)
                yield* Fiber.join(fiber).pipe(Effect.ensuring(Effect.sync(() => node.handlers.delete(fiber))))
                journal.add(`node ${node.id}: released partition ${claim.partition}`)
              })
            })
        })
    })

  const start = Effect.gen(function* () {
    const node: Node = { id: nodes.length, scope: yield* Scope.make(), handlers: new Set(), state: "starting" }
    nodes.push(node)
    journal.add(`node ${node.id}: starting`)
    const layer = Actors.layer({ partitions: options.partitions, runner: options.runner }).pipe(
      Layer.provide(
        Layer.mergeAll(
          LocalActors.layer,
          Layer.succeed(EventLog, nodeLog(node)),
          Layer.succeed(MessageStore, options.store),
          Layer.succeed(Fanout, options.fanout),
          Layer.succeed(SqlClient.SqlClient, options.sql)
        )
      )
    )
    yield* track(
      Layer.buildWithScope(layer, node.scope).pipe(
        Effect.orDie,
        Effect.andThen(
          Effect.sync(() => {
            if (node.state === "starting") node.state = "live"
            journal.add(`node ${node.id}: joined`)
          })
        )
      )
    )
    return node
  })

  const stop = (node: Node) =>
    Effect.gen(function* () {
      node.state = "stopping"
      journal.add(`node ${node.id}: stopping gracefully`)
      yield* track(
        Scope.close(node.scope, Exit.void).pipe(
          Effect.andThen(
            Effect.sync(() => {
              if (node.state === "stopping") node.state = "stopped"
              journal.add(`node ${node.id}: stopped`)
            })
          )
        )
      )
    })

  /** Interrupts every claim handler of the node at once (no drain, no final commit), then it leaves the group. */
  const crash = (node: Node) =>
    Effect.gen(function* () {
      const wasLive = node.state === "live"
      node.state = "crashed"
      journal.add(`node ${node.id}: CRASH (${node.handlers.size} handlers)`)
      yield* Fiber.interruptAll([...node.handlers])
      journal.add(`node ${node.id}: handlers dead`)
      if (wasLive) yield* track(Scope.close(node.scope, Exit.void))
    })

  const inState = (...states: ReadonlyArray<NodeState>) => nodes.filter((n) => states.includes(n.state))

  const awaitPending = Effect.suspend(() => Fiber.awaitAll([...pending])).pipe(
    Effect.repeat({ until: () => pending.size === 0 })
  )

  /** Closes what is still running, gracefully (the end of a run). */
  const shutdown = Effect.gen(function* () {
    yield* awaitPending
    yield* Effect.forEach(inState("live", "starting"), (n) => Scope.close(n.scope, Exit.void), {
      concurrency: "unbounded",
      discard: true
    })
  })

  return { nodes, commits, start, stop, crash, inState, awaitPending, shutdown }
})

// --- live subscribers --------------------------------------------------------------

interface Subscriber {
  /** Every item received, as published. */
  readonly raw: Array<{ readonly seq: number; readonly id: string }>
  /** What a Session would deliver: an item with seq <= the last delivered one is dropped. */
  readonly delivered: Array<{ readonly seq: number; readonly id: string }>
}

const subscribe = Effect.fnUntraced(function* (fanout: Fanout["Service"], chatId: ChatId) {
  const subscriber: Subscriber = { raw: [], delivered: [] }
  let lastDelivered = 0
  const items = yield* fanout.subscribe(chatId).pipe(Effect.orDie)
  yield* items.pipe(
    Stream.runForEach((item) =>
      Effect.sync(() => {
        if (item.seq <= 0) return
        const frame = JSON.parse(item.frame) as { readonly message: { readonly id: string } }
        const entry = { seq: item.seq, id: frame.message.id }
        subscriber.raw.push(entry)
        // src/actors/Session.ts: `if (item.seq <= subscription.lastDelivered) return`.
        if (item.seq <= lastDelivered) return
        lastDelivered = item.seq
        subscriber.delivered.push(entry)
      })
    ),
    Effect.forkScoped
  )
  return subscriber
})

// --- a run -----------------------------------------------------------------------

let runCounter = 0

const fieldsOf = (m: Message) => ({
  seq: m.seq,
  id: m.id,
  authorId: m.authorId,
  body: m.body,
  clientMsgId: m.clientMsgId,
  createdAt: m.createdAt
})

const expectedFields = (record: SendRecord, seq: number) => ({
  seq,
  id: record.id,
  authorId: record.authorId,
  body: record.body,
  clientMsgId: record.clientMsgId,
  createdAt: record.sentAt
})

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)

export interface RunReport {
  /** Every violated invariant; empty when the run is correct. */
  readonly violations: ReadonlyArray<string>
  readonly journal: string
  readonly stats: Counters & { readonly records: number; readonly messages: number; readonly millis: number }
}

const settleDeadlineMillis = 30_000

/** Produces the scenario through the whole path, lets it settle, and reports what is wrong. */
export const runMessagePath = (s: Scenario): Effect.Effect<RunReport, never, MessageStore | SqlClient.SqlClient> =>
  Effect.suspend(() => {
    const journal = new Journal()
    const logger = Logger.make((options) => {
      const parts = Array.isArray(options.message) ? options.message : [options.message]
      journal.add(`log ${options.logLevel}: ${parts.map((p) => (typeof p === "string" ? p : String(p))).join(" ")}`)
    })
    return run(s, journal).pipe(
      Effect.scoped,
      Effect.provideService(References.MinimumLogLevel, "Debug"),
      Effect.provideService(References.CurrentLoggers, new Set([logger]))
    )
  })

const run = (s: Scenario, journal: Journal) =>
  Effect.gen(function* () {
    const began = Date.now()
    const realStore = yield* MessageStore
    const sql = yield* SqlClient.SqlClient
    const prefix = `r${++runCounter}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
    const chatIds = Array.from({ length: chatsPerRun }, (_, i) => chatIdOf(prefix, i))
    for (const id of chatIds) yield* sql`INSERT INTO chats (id, kind) VALUES (${id}, 'group')`.pipe(Effect.orDie)

    const log = MemoryEventLog.make({ drainTimeout: "10 seconds" })
    yield* log.createTopic(MessagesTopic, s.partitions).pipe(Effect.orDie)
    const fanout = Context.get(yield* Layer.build(Fanout.layer.pipe(Layer.provide(Memory.layer))), Fanout)
    const subscribers = new Map<string, Subscriber>()
    for (const chatId of chatIds) subscribers.set(chatId, yield* subscribe(fanout, chatId))

    const sendOps = s.steps.flatMap((st) => (st._tag === "Send" ? [st.op] : []))
    const records = buildRecords(sendOps, { prefix, window: Number.MAX_SAFE_INTEGER })
    const expected = firstOccurrences(records)
    const ends = new Map<number, number>()
    const partitionOf = new Map<string, number>()

    const counters: Counters = { activations: 0, faults: 0, crashes: 0, starts: 0, stops: 0 }
    const cluster = yield* makeCluster({
      log,
      fanout,
      store: faultyStore(realStore, s.faults, journal, counters),
      sql,
      partitions: s.partitions,
      runner: runnerOptions(s),
      journal
    })
    yield* Effect.addFinalizer(() => cluster.shutdown)

    // The scenario: the first node joins, then steps in order.
    journal.add(
      `scenario: ${s.partitions} partitions, ${records.length} records, options ${JSON.stringify(runnerOptions(s))}`
    )
    yield* cluster.start
    let sent = 0
    for (const st of s.steps) {
      switch (st._tag) {
        case "Send": {
          const record = records[sent++]!
          const [position] = yield* log
            .produce(MessagesTopic, [{ key: record.chatId, value: encodeSendRecord(record) }])
            .pipe(Effect.orDie)
          ends.set(position!.partition, position!.offset + 1)
          partitionOf.set(record.chatId, position!.partition)
          journal.add(
            `produce ${record.chatId.slice(prefix.length + 1)} ${record.clientMsgId} (${record.id.slice(0, 6)}) -> p${position!.partition}@${position!.offset}`
          )
          break
        }
        case "Pause":
          yield* Effect.sleep(`${st.millis} millis`)
          break
        case "Start":
          if (cluster.inState("starting", "live").length < 3) {
            counters.starts++
            yield* cluster.start
          }
          break
        case "Stop": {
          const live = cluster.inState("live")
          if (live.length > 0) {
            counters.stops++
            yield* cluster.stop(live[st.pick % live.length]!)
          }
          break
        }
        case "Crash": {
          const running = cluster.inState("live", "stopping")
          if (running.length > 0) {
            counters.crashes++
            yield* cluster.crash(running[st.pick % running.length]!)
          }
          break
        }
      }
    }

    // Settle: wait for joins and drains, make sure a node is running, then
    // wait until everything is persisted, committed, recorded and delivered.
    journal.add("scenario done; settling")
    yield* cluster.awaitPending
    if (cluster.inState("live").length === 0) {
      yield* cluster.start
      yield* cluster.awaitPending
    }

    const storedOf = (chatId: ChatId) =>
      realStore.latest(chatId, 10_000).pipe(
        Effect.orDie,
        Effect.map((ms) => [...ms].sort((a, b) => a.seq - b.seq))
      )
    const lastSeqs = sql<{ id: string; last_seq: string }>`
      SELECT id, last_seq::text AS last_seq FROM chats WHERE id IN ${sql.in(chatIds)}`.pipe(
      Effect.orDie,
      Effect.map((rows) => new Map(rows.map((r) => [r.id, Number(r.last_seq)])))
    )
    const unsettled = Effect.gen(function* () {
      for (const [partition, end] of ends) {
        const last = cluster.commits.get(partition)?.at(-1)?.offset
        if (last !== end) return `partition ${partition}: committed ${last ?? "nothing"} of ${end}`
      }
      const recorded = yield* lastSeqs
      for (const chatId of chatIds) {
        const n = expected.get(chatId)?.length ?? 0
        const stored = yield* storedOf(chatId)
        if (stored.length < n) return `chat ${chatId}: ${stored.length} of ${n} messages stored`
        if (subscribers.get(chatId)!.delivered.length < n) {
          return `chat ${chatId}: ${subscribers.get(chatId)!.delivered.length} of ${n} messages delivered live`
        }
        if ((recorded.get(chatId) ?? 0) < n) return `chat ${chatId}: chats.last_seq ${recorded.get(chatId)} of ${n}`
      }
      return undefined
    })
    const deadline = Date.now() + settleDeadlineMillis
    let waiting = yield* unsettled
    while (waiting !== undefined && Date.now() < deadline) {
      yield* Effect.sleep("20 millis")
      waiting = yield* unsettled
    }
    journal.add(waiting === undefined ? "settled" : `NOT SETTLED: ${waiting}`)

    // The invariants.
    const violations: Array<string> = []
    if (waiting !== undefined) violations.push(`did not settle within ${settleDeadlineMillis} ms: ${waiting}`)
    const recorded = yield* lastSeqs
    for (const chatId of chatIds) {
      const want = (expected.get(chatId) ?? []).map((record, i) => expectedFields(record, i + 1))
      const stored = (yield* storedOf(chatId)).map(fieldsOf)
      // (a) + (b): every distinct id exactly once, seqs 1..n, in log order of first occurrence, with its content.
      if (!same(stored, want)) {
        violations.push(
          `chat ${chatId} (p${partitionOf.get(chatId)}): stored ${JSON.stringify(stored.map((m) => `${m.seq}:${m.id.slice(0, 6)}`))}, want ${JSON.stringify(want.map((m) => `${m.seq}:${m.id.slice(0, 6)}`))}`
        )
        for (const m of stored) {
          const w = want[m.seq - 1]
          if (w !== undefined && !same(m, w))
            violations.push(`chat ${chatId} seq ${m.seq}: stored ${JSON.stringify(m)}, want ${JSON.stringify(w)}`)
        }
      }
      // (c): a live subscriber that drops seqs it has delivered (as Session does) gets 1..n, in order, no gap;
      // and whatever was published under a seq, before or after a replay, is the message stored under it.
      const subscriber = subscribers.get(chatId)!
      const delivered = subscriber.delivered.map((d) => `${d.seq}:${d.id.slice(0, 6)}`)
      const wantDelivered = want.map((m) => `${m.seq}:${m.id.slice(0, 6)}`)
      if (!same(delivered, wantDelivered)) {
        violations.push(
          `chat ${chatId}: delivered live ${JSON.stringify(delivered)}, want ${JSON.stringify(wantDelivered)}`
        )
      }
      for (const item of subscriber.raw) {
        const w = want[item.seq - 1]
        if (w === undefined || w.id !== item.id) {
          violations.push(
            `chat ${chatId}: published seq ${item.seq} as ${item.id}, but seq ${item.seq} is ${w?.id ?? "nothing"}`
          )
        }
      }
      // (e): chats.last_seq caught up with the store.
      if (recorded.get(chatId) !== want.length) {
        violations.push(`chat ${chatId}: chats.last_seq is ${recorded.get(chatId)}, want ${want.length}`)
      }
    }
    // (d): the committed offset reached the end of every partition and never went backwards.
    for (const [partition, end] of ends) {
      const list = cluster.commits.get(partition) ?? []
      if (list.at(-1)?.offset !== end)
        violations.push(`partition ${partition}: last commit ${list.at(-1)?.offset}, end ${end}`)
      for (let i = 1; i < list.length; i++) {
        if (list[i]!.offset < list[i - 1]!.offset) {
          violations.push(
            `partition ${partition}: commit went backwards from ${list[i - 1]!.offset} (node ${list[i - 1]!.node}) to ${list[i]!.offset} (node ${list[i]!.node})`
          )
        }
      }
    }

    return {
      violations,
      journal: journal.tail(),
      stats: {
        ...counters,
        records: records.length,
        messages: [...expected.values()].reduce((n, l) => n + l.length, 0),
        millis: Date.now() - began
      }
    } satisfies RunReport
  })
