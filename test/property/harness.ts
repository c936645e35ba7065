/**
 * A whole message path in one process, for the pipeline properties: one
 * in-process log (MemoryEventLog) that several "actors nodes" consume as the
 * group "actors" (each node is the real `Sequencing.layer` with its own
 * ActiveChats), one shared MessageStore (DynamoMessageStore on dynalite, seen
 * through a fault-injecting decorator), one PubSub with the real Fanout on
 * top, and the migrated SQL state for `chats.last_seq`.
 *
 * A scenario is produced to `chat.messages` step by step, interleaved with
 * faults: nodes joining (rebalance), leaving gracefully (drain, final commit),
 * and crashing — every claim handler of the node is interrupted at once, with
 * no drain and no final commit, before the node leaves the group. (Closing a
 * MemoryEventLog consumer's scope is always graceful, whatever its exit: its
 * leave finalizer drains every claim first. So a crash interrupts the
 * handlers themselves; the group then hands the partitions on from the last
 * commit and everything after it is redelivered.)
 *
 * After the scenario the harness lets the system settle (with a deadline) and
 * reports every violated invariant, with a journal of what happened.
 */
import { Arbitrary, Context, Duration, Effect, Exit, Fiber, Layer, Logger, References, Scope, Stream } from "effect"
import type { Arbitrary as ArbitraryT } from "effect/Arbitrary"
import { SqlClient } from "effect/sql"
import * as Sequencing from "../../src/sequencing/Sequencing.ts"
import { ActiveChats } from "../../src/sequencing/ActiveChats.ts"
import * as Dynalite from "../../src/adapters/dynamo/Dynalite.ts"
import { EventLog, type PartitionClaim } from "../../src/ports/EventLog.ts"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import * as MemoryEventLog from "../../src/adapters/memory/MemoryEventLog.ts"
import { MessageStore, MessageStoreError } from "../../src/ports/MessageStore.ts"
import { PubSub } from "../../src/ports/PubSub.ts"
import { migrate } from "../../src/state/migrations.ts"
import * as Sql from "../../src/adapters/sql/Sql.ts"
import { type ChatId, isChange, type LogEntry, type Message, UserId } from "../../src/schema/Domain.ts"
import { type ChatRecord, encodeChangeRecord, encodeSendRecord, isChangeRecord } from "../../src/schema/Records.ts"
import { Fanout } from "../../src/messages/Fanout.ts"
import type { RunnerOptions } from "../../src/sequencing/PartitionRunner.ts"
import { MessagesTopic } from "../../src/schema/Topics.ts"
import { bool, buildLog, chatIdOf, firstOccurrences, int, modelOf, type SendOp, sendOp } from "./generators.ts"

// --- shared infrastructure ----------------------------------------------------

/** dynalite (in memory) and PGlite, migrated: built once per file; every run uses fresh chat ids. */
export const infraLayer = Layer.mergeAll(
  Dynalite.embeddedLayer({ table: `property-${Date.now().toString(36)}` }),
  Sql.embedded({}).pipe(Layer.tap((context) => Effect.provideContext(migrate, context)))
)

// --- scenarios ----------------------------------------------------------------

export type Step =
  | { readonly _tag: "Send"; readonly op: SendOp }
  /** A change (edit, delete, reaction) read off `op` (see generators.ts `LogOp`). */
  | { readonly _tag: "Change"; readonly op: SendOp }
  | { readonly _tag: "Pause"; readonly millis: number }
  /** A node joins the group (at most three running): a rebalance. */
  | { readonly _tag: "Start" }
  /** A running node leaves gracefully: its claims drain and make their final commit. */
  | { readonly _tag: "Stop"; readonly pick: number }
  /** A running (or draining) node crashes. */
  | { readonly _tag: "Crash"; readonly pick: number }
  /**
   * The node whose sink next writes a batch crashes right after the write,
   * before the batch's offsets complete (the store call hangs until the
   * crash): on replay those messages are in the store already.
   */
  | { readonly _tag: "CrashAfterWrite" }
  /** The next fanout of a message of chat `chat` dies: a defect in that chat's actor, mid-batch. */
  | { readonly _tag: "ActorDefect"; readonly chat: number }

export type StoreFault =
  | { readonly _tag: "Ok" }
  /** Fails before writing anything. */
  | { readonly _tag: "Fail" }
  /** Writes the first `keep` messages of the batch, then fails — or, with `crash`, its node dies mid-batch. */
  | { readonly _tag: "Prefix"; readonly keep: number; readonly crash: boolean }
  /** Writes the messages whose bit is set in `mask` (cyclically), then fails or crashes: unprocessed items. */
  | { readonly _tag: "Subset"; readonly mask: number; readonly crash: boolean }
  /** Writes all but each chat's lowest seq in the batch, then fails or crashes: orphans above a gap. */
  | { readonly _tag: "Orphans"; readonly crash: boolean }
  /** Waits, then writes. */
  | { readonly _tag: "Slow"; readonly millis: number }
  /** Writes, then waits before answering: the window between durable and completed. */
  | { readonly _tag: "SlowAfter"; readonly millis: number }
  /**
   * A request already on the wire to a stalled store: it lands after
   * `millis` whether or not its caller still waits (an interrupted or
   * timed-out write may still be applied), and answers then.
   */
  | { readonly _tag: "Stall"; readonly millis: number }

export interface Scenario {
  readonly partitions: number
  readonly steps: ReadonlyArray<Step>
  /** The fate of the n-th putBatch call (over all nodes); calls past the end succeed. */
  readonly faults: ReadonlyArray<StoreFault>
  readonly mailboxSize: number
  readonly backlog: number
  readonly batchSize: number
  readonly commitMillis: number
  readonly idleMillis: number
  readonly ringSize: number
  /** Dedupe window (default 1000: every retry and replay of a scenario stays inside it); restore window is it + batchSize. */
  readonly dedupeWindow?: number
  /** The first activation of this chat (its `latest` read) takes this long: a throttled or failing read. */
  readonly slowActivation?: { readonly chat: number; readonly millis: number }
  /** How long the log lets a revoked claim's handler drain before interrupting it (default 10 s). */
  readonly drainMillis?: number
  /** How long a revoked partition's runner waits for its backlog to persist (default 5 s). */
  readonly runnerDrainMillis?: number
}

export const chatsPerRun = 4
export const authorsPerRun = 3

/** Step kinds by weight; kind 0 (a send) is where shrinking heads. */
const step: ArbitraryT<Step> = Arbitrary.map(
  Arbitrary.all({ kind: int(0, 21), op: sendOp(chatsPerRun * 2, authorsPerRun), n: int(0, 40) }),
  ({ kind, op, n }): Step =>
    kind <= 11
      ? // Chat 0 is hot (5 sends in 8), so batches often hold several messages of one chat.
        { _tag: "Send", op: { ...op, chat: Math.max(0, op.chat - chatsPerRun - 1) } }
      : kind <= 14
        ? { _tag: "Pause", millis: n }
        : kind <= 16
          ? { _tag: "Start" }
          : kind <= 17
            ? { _tag: "Stop", pick: n }
            : kind <= 19
              ? { _tag: "Crash", pick: n }
              : { _tag: "CrashAfterWrite" }
)

const fault: ArbitraryT<StoreFault> = Arbitrary.map(
  Arbitrary.all({ kind: int(0, 9), n: int(0, 255), crash: bool }),
  ({ kind, n, crash }): StoreFault =>
    kind <= 2
      ? { _tag: "Ok" }
      : kind === 3
        ? { _tag: "Fail" }
        : kind === 4
          ? { _tag: "Prefix", keep: n % 8, crash }
          : kind === 5
            ? { _tag: "Subset", mask: n, crash }
            : kind === 6
              ? { _tag: "Orphans", crash }
              : kind <= 8
                ? { _tag: "Slow", millis: n % 30 }
                : { _tag: "SlowAfter", millis: n % 30 }
)

const failing = (f: StoreFault) =>
  f._tag === "Fail" || f._tag === "Prefix" || f._tag === "Subset" || f._tag === "Orphans"

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

/**
 * Passivation mid-stream: one node, no crashes, sends to a couple of chats
 * separated by pauses around a short idle timeout, and a store that is slow
 * or fails (retries take 100 ms and more) — so actors go idle while their
 * messages are still on their way to the store, and records arrive for them
 * just as they passivate.
 */
export const passivationScenario: ArbitraryT<Scenario> = Arbitrary.map(
  Arbitrary.all({
    idleMillis: int(5, 30),
    steps: Arbitrary.array(Arbitrary.all({ pause: bool, op: sendOp(2, authorsPerRun), jitter: int(0, 40) }), {
      minLength: 6,
      maxLength: 50
    }),
    faults: Arbitrary.array(Arbitrary.all({ kind: int(0, 3), millis: int(0, 60) }), { minLength: 4, maxLength: 24 }),
    batchSize: int(1, 4)
  }),
  ({ idleMillis, steps, faults, batchSize }): Scenario => ({
    partitions: 1,
    steps: steps.map(({ pause, op, jitter }) =>
      pause ? { _tag: "Pause", millis: Math.max(0, idleMillis - 10 + jitter) } : { _tag: "Send", op }
    ),
    faults: faults.map(
      ({ kind, millis }, i, all): StoreFault =>
        kind === 0
          ? { _tag: "Ok" }
          : kind === 1 && !(i > 0 && all[i - 1]!.kind === 1)
            ? { _tag: "Fail" }
            : kind === 2
              ? { _tag: "Slow", millis }
              : { _tag: "SlowAfter", millis }
    ),
    mailboxSize: 2,
    backlog: 4,
    batchSize,
    commitMillis: 10,
    idleMillis,
    ringSize: 4
  })
)

/**
 * Whole scenarios with actors dying by a defect (once or twice: three deaths
 * on one batch make it poison, skipped by design — see ChatActors.ts; chat 0,
 * the hot one, most often) among the sends, crashes, rebalances and store
 * faults.
 */
export const supervisionScenario: ArbitraryT<Scenario> = Arbitrary.map(
  Arbitrary.all({
    base: scenario,
    defects: Arbitrary.array(Arbitrary.all({ at: int(0, 70), chat: int(0, chatsPerRun + 1) }), {
      minLength: 1,
      maxLength: 2
    })
  }),
  ({ base, defects }) => {
    const steps = [...base.steps]
    for (const { at, chat } of defects) {
      steps.splice(Math.min(at, steps.length), 0, { _tag: "ActorDefect", chat: Math.max(0, chat - 2) })
    }
    return { ...base, steps }
  }
)

/**
 * A store that stalls for longer than the log lets a revoked claim drain,
 * while partitions move: nodes join and leave gracefully between sends, and
 * most writes stall past the drain timeout (so the log interrupts the
 * draining handler) and still land afterwards, as a timed-out request to a
 * slow DynamoDB does. No crashes: every loss here is the hand-over's.
 */
export const stallScenario: ArbitraryT<Scenario> = Arbitrary.map(
  Arbitrary.all({
    partitions: int(1, 3),
    steps: Arbitrary.array(Arbitrary.all({ kind: int(0, 9), op: sendOp(chatsPerRun, authorsPerRun), n: int(0, 40) }), {
      minLength: 10,
      maxLength: 50
    }),
    stalls: Arbitrary.array(Arbitrary.all({ stall: bool, millis: int(0, 500) }), { minLength: 4, maxLength: 10 }),
    batchSize: int(1, 4)
  }),
  ({ partitions, steps, stalls, batchSize }): Scenario => ({
    partitions,
    steps: steps.map(
      ({ kind, op, n }): Step =>
        kind <= 5
          ? { _tag: "Send", op }
          : kind <= 6
            ? { _tag: "Pause", millis: n }
            : kind <= 7
              ? { _tag: "Start" }
              : { _tag: "Stop", pick: n }
    ),
    // Past the log's drain timeout (below), so only a drain the runner bounds itself avoids an interruption.
    faults: stalls.map(
      ({ stall, millis }): StoreFault => (stall ? { _tag: "Stall", millis: 1_100 + millis } : { _tag: "Ok" })
    ),
    mailboxSize: 4,
    backlog: 8,
    batchSize,
    commitMillis: 10,
    idleMillis: 1_000,
    ringSize: 8,
    drainMillis: 1_000,
    runnerDrainMillis: 50
  })
)

/**
 * Whole scenarios with changes: as `scenario`, with 4 sends in 10 turned into
 * edits, deletes and reactions to earlier messages of their chat (and
 * retries of earlier changes), interleaved with the rest.
 */
export const withChanges = (scenarios: ArbitraryT<Scenario>): ArbitraryT<Scenario> =>
  Arbitrary.map(scenarios, (s) => ({
    ...s,
    steps: s.steps.map((st): Step => (st._tag === "Send" && st.op.retry >= 6 ? { _tag: "Change", op: st.op } : st))
  }))
export const changesScenario = withChanges(scenario)

export const runnerOptions = (s: Scenario): RunnerOptions => ({
  actors: {
    mailboxSize: s.mailboxSize,
    idleTimeout: Duration.millis(s.idleMillis),
    // By default large enough that every retry and every replay stays inside
    // the window (the window's own promise is the Sequencer properties' business).
    dedupeWindow: s.dedupeWindow ?? 1000,
    ringSize: s.ringSize,
    restoreWindow: (s.dedupeWindow ?? 1000) + s.batchSize
  },
  backlog: s.backlog,
  batchSize: s.batchSize,
  commitInterval: Duration.millis(s.commitMillis),
  drainTimeout: Duration.millis(s.runnerDrainMillis ?? 5_000)
})

// --- the journal ------------------------------------------------------------------

class Journal {
  private readonly started = Date.now()
  readonly lines: Array<string> = []
  add(line: string) {
    this.lines.push(`${String(Date.now() - this.started).padStart(5)}ms ${line}`)
  }
  tail(count = 150) {
    const shown = this.lines.slice(-count)
    const skipped = this.lines.length - shown.length
    return [...(skipped > 0 ? [`... ${skipped} earlier lines`] : []), ...shown].join("\n")
  }
}

const shortChat = (chatId: string) => chatId.slice(chatId.lastIndexOf("-") + 1)

const describeBatch = (messages: ReadonlyArray<LogEntry>) => {
  const byChat = new Map<string, Array<number>>()
  for (const m of messages) byChat.set(m.chatId, [...(byChat.get(m.chatId) ?? []), m.seq])
  return [...byChat].map(([chat, seqs]) => `${shortChat(chat)}:${seqs.join(",")}`).join(" ")
}

/** What happened in a run, to see that the generators reach the interesting places. */
export interface Counters {
  records: number
  messages: number
  starts: number
  stops: number
  crashes: number
  /** Crashes right after a successful write, before the offsets completed. */
  crashesAfterWrite: number
  /** Crashes in the middle of a batch (after a partial write). */
  crashesMidBatch: number
  /** Actors killed by an injected defect. */
  defects: number
  batches: number
  /** Batches with several messages of one chat. */
  multiBatches: number
  /** putBatch calls that met a fault. */
  faults: number
  /** Partial writes that left a message above a gap. */
  orphanWrites: number
  /** Claim handlers the log interrupted because they did not drain in time. */
  interruptedDrains: number
  activations: number
  /** Activations that found messages above a gap (orphans of a half-written batch). */
  gapRestores: number
  millis: number
}

// --- the fault-injecting store ------------------------------------------------------

/**
 * The store calls of every node go through one of these. It delegates to the
 * real adapter (it is not a model of the port): the n-th putBatch call over
 * all nodes meets faults[n], and a call that must end in its node's crash
 * hangs until the crash interrupts it.
 */
class FaultyStore {
  private calls = 0
  /** Set by a CrashAfterWrite step: the next successful write crashes its node. */
  private crashAfterWrite: { node: number | undefined; cancelled: boolean } | undefined
  /** How the store crashes a node (set once the cluster exists). */
  crashNode: (node: number) => Effect.Effect<void> = () => Effect.void

  private slowActivationPending: boolean
  private readonly real: MessageStore["Service"]
  private readonly faults: ReadonlyArray<StoreFault>
  private readonly journal: Journal
  private readonly counters: Counters
  private readonly slowActivation: { readonly chatId: string; readonly millis: number } | undefined

  constructor(
    real: MessageStore["Service"],
    faults: ReadonlyArray<StoreFault>,
    journal: Journal,
    counters: Counters,
    slowActivation: { readonly chatId: string; readonly millis: number } | undefined
  ) {
    this.real = real
    this.faults = faults
    this.journal = journal
    this.counters = counters
    this.slowActivation = slowActivation
    this.slowActivationPending = slowActivation !== undefined
  }

  /** Arms a crash for the node whose next write succeeds; answers it, or undefined after `millis`. */
  awaitWrite(millis: number): Effect.Effect<number | undefined> {
    const trap: { node: number | undefined; cancelled: boolean } = { node: undefined, cancelled: false }
    const self = this
    return Effect.gen(function* () {
      self.crashAfterWrite = trap
      const deadline = Date.now() + millis
      while (trap.node === undefined && Date.now() < deadline) yield* Effect.sleep("2 millis")
      trap.cancelled = true
      if (self.crashAfterWrite === trap) self.crashAfterWrite = undefined
      return trap.node
    })
  }

  /** What `node` sees. */
  view(node: number): MessageStore["Service"] {
    const { real, journal, counters } = this
    const injected = (what: string) => new MessageStoreError({ message: `injected fault: ${what}` })

    /** After a successful write: crash the node here if a CrashAfterWrite step is waiting. */
    const written = Effect.suspend(() => {
      const trap = this.crashAfterWrite
      if (trap === undefined || trap.cancelled) return Effect.void
      trap.node = node
      this.crashAfterWrite = undefined
      counters.crashesAfterWrite++
      journal.add(`store: node ${node} wrote its batch; the node crashes before the offsets complete`)
      return Effect.never
    })

    /** Writes part of the batch, then fails, or the node dies there. */
    const partial = (part: ReadonlyArray<LogEntry>, crash: boolean, what: string) =>
      (part.length === 0 ? Effect.void : real.putBatch(part)).pipe(
        Effect.andThen(
          Effect.suspend(() => {
            if (!crash) return Effect.fail(injected(what))
            counters.crashesMidBatch++
            journal.add(`store: node ${node} dies mid-batch after writing [${describeBatch(part)}]`)
            return this.crashNode(node).pipe(Effect.andThen(Effect.never))
          })
        )
      )

    return MessageStore.of({
      ...real,
      latest: (chatId, limit) =>
        Effect.suspend(() => {
          counters.activations++
          const slow = this.slowActivationPending && this.slowActivation?.chatId === chatId
          if (slow) {
            this.slowActivationPending = false
            journal.add(`store: node ${node} activation of ${shortChat(chatId)} is slow`)
          }
          return Effect.sleep(Duration.millis(slow ? this.slowActivation!.millis : 0)).pipe(
            Effect.andThen(real.latest(chatId, limit)),
            Effect.tap((latest) =>
              Effect.sync(() => {
                const seqs = latest.map((m) => m.seq).sort((a, b) => a - b)
                // Below a full window the newest messages reach back to seq 1.
                const gap =
                  seqs.some((seq, i) => i > 0 && seq !== seqs[i - 1]! + 1) ||
                  (seqs.length > 0 && seqs.length < limit && seqs[0] !== 1)
                if (gap) counters.gapRestores++
                journal.add(`store: node ${node} activates ${shortChat(chatId)}: seqs [${seqs}]${gap ? " (GAP)" : ""}`)
              })
            )
          )
        }),
      putBatch: (messages) =>
        Effect.suspend(() => {
          const call = this.calls++
          const f = this.faults[call] ?? { _tag: "Ok" }
          counters.batches++
          if (messages.some((m) => messages.some((o) => o !== m && o.chatId === m.chatId))) counters.multiBatches++
          if (f._tag !== "Ok") counters.faults++
          journal.add(`store: node ${node} putBatch #${call} [${describeBatch(messages)}] ${JSON.stringify(f)}`)
          switch (f._tag) {
            case "Ok":
              return real.putBatch(messages).pipe(Effect.andThen(written))
            case "Fail":
              return Effect.fail(injected("nothing written"))
            case "Prefix": {
              const part = messages.slice(0, f.keep % (messages.length + 1))
              return partial(part, f.crash, `wrote the first ${part.length}`)
            }
            case "Subset":
            case "Orphans": {
              const lowest = (m: LogEntry) => !messages.some((o) => o.chatId === m.chatId && o.seq < m.seq)
              const part = messages.filter((m, i) =>
                f._tag === "Subset" ? ((f.mask >> (i % 8)) & 1) === 1 : !lowest(m)
              )
              const skipped = messages.filter((m) => !part.includes(m))
              if (part.some((m) => skipped.some((k) => k.chatId === m.chatId && k.seq < m.seq))) {
                counters.orphanWrites++
              }
              return partial(part, f.crash, `wrote only [${describeBatch(part)}]`)
            }
            case "Slow":
              return Effect.sleep(Duration.millis(f.millis)).pipe(
                Effect.andThen(real.putBatch(messages)),
                Effect.andThen(written)
              )
            case "SlowAfter":
              return real
                .putBatch(messages)
                .pipe(Effect.andThen(written), Effect.andThen(Effect.sleep(Duration.millis(f.millis))))
            case "Stall":
              return Effect.forkDetach(
                Effect.sleep(Duration.millis(f.millis)).pipe(
                  Effect.andThen(real.putBatch(messages)),
                  Effect.tap(() =>
                    Effect.sync(() => journal.add(`store: node ${node} stalled putBatch #${call} landed`))
                  )
                )
              ).pipe(Effect.flatMap(Fiber.join), Effect.andThen(written))
          }
        })
    })
  }
}

// --- nodes --------------------------------------------------------------------------

type NodeState = "starting" | "live" | "stopping" | "stopped" | "crashed"

interface Node {
  readonly id: number
  readonly scope: Scope.Closeable
  /** The node's running claim handlers (PartitionRunners). */
  readonly handlers: Set<Fiber.Fiber<void>>
  state: NodeState
  /** Joining the group (building the node's layer). */
  joining: Fiber.Fiber<void> | undefined
}

interface Commit {
  readonly offset: number
  readonly node: number
}

interface ClusterOptions {
  readonly log: EventLog["Service"]
  readonly fanout: Fanout["Service"]
  readonly pubsub: PubSub["Service"]
  readonly store: FaultyStore
  readonly sql: SqlClient.SqlClient
  readonly partitions: number
  readonly runner: RunnerOptions
  readonly journal: Journal
}

const makeCluster = Effect.fnUntraced(function* (options: ClusterOptions) {
  const { journal } = options
  const nodes: Array<Node> = []
  /** Joins, leaves and crashes in progress. */
  const pending = new Set<Fiber.Fiber<void>>()
  /** Every successful commit, per partition, in the order they happened. */
  const commits = new Map<number, Array<Commit>>()
  const runScope = yield* Effect.scope

  const track = (effect: Effect.Effect<void>) =>
    Effect.gen(function* () {
      const fiber = yield* Effect.forkIn(effect, runScope)
      pending.add(fiber)
      fiber.addObserver(() => pending.delete(fiber))
      return fiber
    })

  /** The log as one node sees it: claim handlers run as fibers a crash can interrupt; commits are recorded. */
  const nodeLog = (node: Node): EventLog["Service"] =>
    EventLog.of({
      ...options.log,
      consume: (consume) =>
        options.log.consume({
          ...consume,
          onClaim: (claim) =>
            Effect.suspend(() => {
              // A crashed node never runs a handler again (the log restarts a failed handler until the node leaves).
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
    const node: Node = {
      id: nodes.length,
      scope: yield* Scope.make(),
      handlers: new Set(),
      state: "starting",
      joining: undefined
    }
    nodes.push(node)
    journal.add(`node ${node.id}: starting`)
    const layer = Sequencing.layer({ partitions: options.partitions, runner: options.runner }).pipe(
      Layer.provide(
        Layer.mergeAll(
          ActiveChats.layer.pipe(Layer.provide(Layer.succeed(PubSub, options.pubsub))),
          Layer.succeed(EventLog, nodeLog(node)),
          Layer.succeed(MessageStore, options.store.view(node.id)),
          Layer.succeed(Fanout, options.fanout),
          Layer.succeed(SqlClient.SqlClient, options.sql)
        )
      )
    )
    node.joining = yield* track(
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

  /** Interrupts every claim handler of the node at once (no drain, no final commit); then it leaves the group. */
  const crash = (node: Node) =>
    Effect.gen(function* () {
      const was = node.state
      if (was === "crashed" || was === "stopped") return
      node.state = "crashed"
      journal.add(`node ${node.id}: CRASH (${node.handlers.size} handlers)`)
      yield* Fiber.interruptAll([...node.handlers])
      journal.add(`node ${node.id}: handlers dead`)
      // A stopping node is leaving already; a joining one leaves once it has joined.
      if (was === "live") yield* track(Scope.close(node.scope, Exit.void))
      if (was === "starting") {
        yield* track(Fiber.await(node.joining!).pipe(Effect.andThen(Scope.close(node.scope, Exit.void))))
      }
    })

  // A store call that ends in its node's crash cannot run the crash itself: the crash interrupts it.
  options.store.crashNode = (id) => track(crash(nodes[id]!)).pipe(Effect.asVoid)

  const inState = (...states: ReadonlyArray<NodeState>) => nodes.filter((n) => states.includes(n.state))

  const awaitPending = Effect.suspend(() => Fiber.awaitAll([...pending])).pipe(
    Effect.repeat({ until: () => pending.size === 0 })
  )

  /** Stops what is still running, gracefully (the end of a run). */
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

interface Delivery {
  readonly seq: number
  readonly id: string
}

interface Subscriber {
  /** Every message item received, as published. */
  readonly raw: Array<Delivery>
  /** What a Session delivers: an item with seq <= the last delivered one is dropped. */
  readonly delivered: Array<Delivery>
}

const subscribe = Effect.fnUntraced(function* (fanout: Fanout["Service"], chatId: ChatId) {
  const subscriber: Subscriber = { raw: [], delivered: [] }
  let lastDelivered = 0
  const items = yield* fanout.subscribe(chatId).pipe(Effect.orDie)
  yield* items.pipe(
    Stream.runForEach((item) =>
      Effect.sync(() => {
        if (item.seq <= 0) return
        // A message frame carries its message; a change frame is the change itself.
        const frame = JSON.parse(item.frame) as { readonly id?: string; readonly message?: { readonly id: string } }
        const entry = { seq: item.seq, id: frame.message?.id ?? frame.id ?? "" }
        subscriber.raw.push(entry)
        // As src/gateway/Session.ts: `if (item.seq <= subscription.lastDelivered) return`.
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

export interface RunReport {
  /** Every violated invariant (a stale `chats.last_seq` included); empty when the run is correct. */
  readonly violations: ReadonlyArray<string>
  /**
   * Chats whose `chats.last_seq` stayed below their stored messages — as
   * happened when a message reached the store but its offset did not
   * complete before a crash: on replay it is a duplicate, completed without
   * the sink. The restored actor records the seqs it restored; see the
   * targeted test of messagePath.test.ts.
   */
  readonly staleLastSeq: ReadonlyArray<string>
  readonly journal: string
  readonly counters: Counters
}

const settleDeadlineMillis = 30_000
/** Settling gives up sooner once nothing at all has happened for this long (the longest retry backoff is < 1 s). */
const quiescenceMillis = 3_000
/** chats.last_seq is written right after the offsets complete; this is its grace after settling. */
const lastSeqGraceMillis = 200
/** How long a CrashAfterWrite step waits for a write to crash after. */
const crashAfterWriteMillis = 150

let runCounter = 0

/** A log entry's fields, in a fixed order: a change as it is, a message as it is now. */
const fieldsOf = (entry: LogEntry): { readonly seq: number; readonly id: string } =>
  isChange(entry)
    ? (Object.fromEntries(Object.entries(entry).sort(([a], [b]) => a.localeCompare(b))) as { seq: number; id: string })
    : fieldsOfMessage(entry)
const fieldsOfMessage = (m: Message) => ({
  seq: m.seq,
  id: m.id as string,
  authorId: m.authorId as string,
  body: m.body,
  clientMsgId: m.clientMsgId,
  createdAt: m.createdAt,
  editedAt: m.editedAt,
  deletedAt: m.deletedAt
})

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)
const brief = (list: ReadonlyArray<{ readonly seq: number; readonly id: string }>) =>
  JSON.stringify(list.map((m) => `${m.seq}:${m.id.slice(0, 6)}`))

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
    // Actors drop the records of chats that do not exist.
    for (const id of chatIds) yield* sql`INSERT INTO chats (id, kind) VALUES (${id}, 'group')`.pipe(Effect.orDie)

    const log = MemoryEventLog.make({ drainTimeout: Duration.millis(s.drainMillis ?? 10_000) })
    yield* log.createTopic(MessagesTopic, s.partitions).pipe(Effect.orDie)
    const shared = yield* Layer.build(Fanout.layer.pipe(Layer.provideMerge(Memory.layer)))
    const fanout = Context.get(shared, Fanout)
    /** Chats whose actor dies at its next fanout (ActorDefect steps). */
    const doomed = new Set<string>()
    const defectiveFanout = Fanout.of({
      ...fanout,
      publishMessages: (messages, parents) =>
        Effect.suspend(() => {
          const victim = messages.find((m) => doomed.delete(m.chatId))
          if (victim === undefined) return fanout.publishMessages(messages, parents)
          counters.defects++
          journal.add(`defect: the actor of ${shortChat(victim.chatId)} dies publishing seq ${victim.seq}`)
          return Effect.die(new Error(`injected defect in the actor of ${victim.chatId}`))
        })
    })
    // Live subscribers first, so they see every publication.
    const subscribers = new Map<string, Subscriber>()
    for (const chatId of chatIds) subscribers.set(chatId, yield* subscribe(fanout, chatId))

    const logOps = s.steps.flatMap((st) =>
      st._tag === "Send" || st._tag === "Change" ? [{ op: st.op, change: st._tag === "Change" }] : []
    )
    const records = buildLog(logOps, { prefix })
    const expected = firstOccurrences(records.filter((record) => record !== undefined))
    /** One past the last offset produced, per partition. */
    const ends = new Map<number, number>()
    const partitionOf = new Map<string, number>()

    const counters: Counters = {
      records: records.filter((record) => record !== undefined).length,
      messages: [...expected.values()].reduce((n, list) => n + list.length, 0),
      starts: 1,
      stops: 0,
      crashes: 0,
      crashesAfterWrite: 0,
      crashesMidBatch: 0,
      defects: 0,
      batches: 0,
      multiBatches: 0,
      faults: 0,
      orphanWrites: 0,
      interruptedDrains: 0,
      activations: 0,
      gapRestores: 0,
      millis: 0
    }
    const store = new FaultyStore(
      realStore,
      s.faults,
      journal,
      counters,
      s.slowActivation && { chatId: chatIds[s.slowActivation.chat]!, millis: s.slowActivation.millis }
    )
    const cluster = yield* makeCluster({
      log,
      fanout: defectiveFanout,
      pubsub: Context.get(shared, PubSub),
      store,
      sql,
      partitions: s.partitions,
      runner: runnerOptions(s),
      journal
    })
    yield* Effect.addFinalizer(() => cluster.shutdown)

    // The scenario: a first node joins, then the steps in order.
    journal.add(`scenario: ${records.length} records, ${JSON.stringify({ ...s, steps: undefined, faults: undefined })}`)
    journal.add(`faults: ${JSON.stringify(s.faults)}`)
    yield* cluster.start
    let sent = 0
    for (const st of s.steps) {
      switch (st._tag) {
        case "Send":
        case "Change": {
          const record: ChatRecord | undefined = records[sent++]
          if (record === undefined) break
          const value = isChangeRecord(record) ? encodeChangeRecord(record) : encodeSendRecord(record)
          const [position] = yield* log.produce(MessagesTopic, [{ key: record.chatId, value }]).pipe(Effect.orDie)
          ends.set(position!.partition, position!.offset + 1)
          partitionOf.set(record.chatId, position!.partition)
          const what = isChangeRecord(record) ? `${record.type}(${record.targetSeq})` : record.clientMsgId
          journal.add(
            `produce ${shortChat(record.chatId)} ${what} (${record.id.slice(0, 6)}) -> p${position!.partition}@${position!.offset}`
          )
          break
        }
        case "Pause":
          yield* Effect.sleep(Duration.millis(st.millis))
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
        case "ActorDefect":
          doomed.add(chatIds[st.chat % chatIds.length]!)
          break
        case "CrashAfterWrite": {
          if (cluster.inState("starting", "live", "stopping").length === 0) break
          const node = yield* store.awaitWrite(crashAfterWriteMillis)
          if (node !== undefined) {
            counters.crashes++
            yield* cluster.crash(cluster.nodes[node]!)
          }
          break
        }
      }
    }

    // Settle: wait for joins, leaves and crashes; make sure a node is running;
    // then wait until everything is committed, stored and delivered live.
    journal.add("scenario done; settling")
    yield* cluster.awaitPending
    // (A store fault can crash a node while settling too: a new one takes over.)
    const keepANodeRunning = Effect.gen(function* () {
      if (cluster.inState("starting", "live").length > 0) return
      yield* cluster.awaitPending
      counters.starts++
      yield* cluster.start
    })
    yield* keepANodeRunning

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
      for (const chatId of chatIds) {
        const n = expected.get(chatId)?.length ?? 0
        const stored = yield* storedOf(chatId)
        if (stored.length < n) return `chat ${chatId}: ${stored.length} of ${n} messages stored`
        const delivered = subscribers.get(chatId)!.delivered.length
        if (delivered < n) return `chat ${chatId}: ${delivered} of ${n} messages delivered live`
      }
      return undefined
    })
    const deadline = Date.now() + settleDeadlineMillis
    let waiting = yield* unsettled
    let activity = { lines: journal.lines.length, at: Date.now() }
    while (waiting !== undefined && Date.now() < deadline && Date.now() - activity.at < quiescenceMillis) {
      yield* Effect.sleep("20 millis")
      yield* keepANodeRunning
      waiting = yield* unsettled
      if (journal.lines.length !== activity.lines) activity = { lines: journal.lines.length, at: Date.now() }
    }
    journal.add(waiting === undefined ? "settled" : `NOT SETTLED: ${waiting}`)
    const lastSeqCaughtUp = (recorded: Map<string, number>) =>
      chatIds.every((chatId) => recorded.get(chatId) === (expected.get(chatId)?.length ?? 0))
    let recorded = yield* lastSeqs
    const lastSeqDeadline = Date.now() + lastSeqGraceMillis
    while (!lastSeqCaughtUp(recorded) && Date.now() < lastSeqDeadline) {
      yield* Effect.sleep("20 millis")
      recorded = yield* lastSeqs
    }

    // The invariants.
    const violations: Array<string> = []
    const staleLastSeq: Array<string> = []
    if (waiting !== undefined) violations.push(`did not settle: ${waiting}`)
    for (const chatId of chatIds) {
      const where = `chat ${chatId} (p${partitionOf.get(chatId) ?? "-"})`
      const model = modelOf(expected.get(chatId) ?? [])
      const want = model.entries.map(fieldsOf)
      const stored = (yield* storedOf(chatId)).map(fieldsOf)
      // (a) + (b): every distinct id exactly once, seqs 1..n in log order of first occurrence, with its content.
      if (!same(stored, want)) {
        violations.push(`${where}: stored ${brief(stored)}, want ${brief(want)}`)
        for (const m of stored) {
          const w = want[m.seq - 1]
          if (w !== undefined && w.id === m.id && !same(m, w)) {
            violations.push(`${where} seq ${m.seq}: stored ${JSON.stringify(m)}, want ${JSON.stringify(w)}`)
          }
        }
      }
      // (a'): history counts reactions as the log applied once in seq order does.
      const viewer = UserId.make("u0")
      const page = yield* realStore.page(chatId, { after: 0, limit: 100, viewer }).pipe(Effect.orDie)
      for (const message of page) {
        const wantReactions = model.reactionsOf(message.seq, viewer)
        if (!same(message.reactions, wantReactions)) {
          violations.push(
            `${where} seq ${message.seq}: reactions ${JSON.stringify(message.reactions)}, want ${JSON.stringify(wantReactions)}`
          )
        }
      }
      // (c): a subscriber that drops seqs it has delivered (as Session does) gets 1..n in order, no gap; and
      // whatever was published under a seq, before or after a replay, is the message stored under it.
      const subscriber = subscribers.get(chatId)!
      if (!same(brief(subscriber.delivered), brief(want))) {
        violations.push(`${where}: delivered live ${brief(subscriber.delivered)}, want ${brief(want)}`)
      }
      for (const item of subscriber.raw) {
        const w = want[item.seq - 1]
        if (w === undefined || w.id !== item.id) {
          violations.push(
            `${where}: published seq ${item.seq} as ${item.id}, but seq ${item.seq} is ${w?.id ?? "nothing"}`
          )
        }
      }
      // (e): chats.last_seq caught up with the store, and is never ahead of it.
      const lastSeq = recorded.get(chatId) ?? 0
      if (lastSeq > want.length) violations.push(`${where}: chats.last_seq is ${lastSeq}, ahead of ${want.length}`)
      else if (lastSeq < want.length) staleLastSeq.push(`${where}: chats.last_seq is ${lastSeq}, want ${want.length}`)
    }
    violations.push(...staleLastSeq)
    // (f): a runner whose drain is bounded below the log's finishes on its own: the log never interrupts it.
    counters.interruptedDrains = journal.lines.filter((line) => line.includes("did not finish within")).length
    if (s.runnerDrainMillis !== undefined && counters.interruptedDrains > 0) {
      violations.push(`the log interrupted ${counters.interruptedDrains} draining claim handlers`)
    }
    // (d): the committed offset reached the end of every partition and never went backwards.
    for (const [partition, end] of ends) {
      const list = cluster.commits.get(partition) ?? []
      if (list.at(-1)?.offset !== end) {
        violations.push(`partition ${partition}: last commit ${list.at(-1)?.offset}, end ${end}`)
      }
      for (let i = 1; i < list.length; i++) {
        if (list[i]!.offset < list[i - 1]!.offset) {
          violations.push(
            `partition ${partition}: commit went backwards from ${list[i - 1]!.offset} (node ${list[i - 1]!.node}) to ${list[i]!.offset} (node ${list[i]!.node})`
          )
        }
      }
    }

    counters.millis = Date.now() - began
    return { violations: [...new Set(violations)], staleLastSeq, journal: journal.tail(), counters } satisfies RunReport
  })
